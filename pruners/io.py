"""Write and read pruning results: masks.safetensors, stats.json, weights.safetensors (atomically)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from pruners.errors import PruneError


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_result(result, out_dir, save_weights: bool = False, model=None) -> dict:
    """Write masks.safetensors + stats.json (+ weights.safetensors); returns {kind: path}.

    weights.safetensors holds the pruned weights of every pruned Linear: `result.weights` when the method
    updated them (SparseGPT), else read from the pruned `model`.
    """
    out = Path(out_dir)
    paths = {"masks": out / "masks.safetensors", "stats": out / "stats.json"}
    masks = {k: v.contiguous() for k, v in result.masks.items()}
    _atomic_write(paths["masks"], lambda p: save_file(masks, p, metadata={"format": "pt", "pruned": "1"}))
    text = json.dumps(result.stats, indent=2, default=str)
    _atomic_write(paths["stats"], lambda p: Path(p).write_text(text))
    if save_weights:
        weights = result.weights
        if not weights:
            if model is None:
                raise PruneError("save_weights: the method kept the dense weights; pass the pruned model")
            params = dict(model.named_parameters())
            weights = {k: params[k].detach().cpu() for k in result.masks}
        paths["weights"] = out / "weights.safetensors"
        weights = {k: v.contiguous() for k, v in weights.items()}
        _atomic_write(paths["weights"], lambda p: save_file(weights, p, metadata={"format": "pt"}))
    return paths


def load_masks(path) -> dict:
    """{param name: uint8 tensor} from a masks.safetensors file."""
    p = Path(path)
    if not p.is_file():
        raise PruneError(f"mask file {p} does not exist")
    return load_file(str(p))
