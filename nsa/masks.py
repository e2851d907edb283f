"""Pruning masks on a model: load them, check they fit, apply them (in place or on a copy).

Masks are `{parameter name: uint8 tensor of the parameter's shape}`, 1 = pruned (see pruners.io).
"""
from __future__ import annotations

import copy
from pathlib import Path

from nsa.errors import NSAError


def load_masks(path) -> dict:
    """Masks from a `masks.safetensors` file (or a run folder containing one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "masks.safetensors"
    if not p.is_file():
        raise NSAError(f"mask file {p} does not exist: give a masks.safetensors written by `python -m nsa prune`")
    from safetensors.torch import load_file
    try:
        return load_file(str(p))
    except Exception as err:  # corrupt/foreign file
        raise NSAError(f"cannot read masks from {p}: {err}") from err


def check_masks(model, masks: dict) -> None:
    """Raise NSAError naming the first mismatches when mask names or shapes do not fit `model`."""
    params = dict(model.named_parameters())
    missing = [n for n in masks if n not in params]
    wrong = [f"{n} {tuple(masks[n].shape)} vs {tuple(params[n].shape)}"
             for n in masks if n in params and tuple(masks[n].shape) != tuple(params[n].shape)]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} mask(s) name no parameter of the model, e.g. {missing[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} mask(s) have the wrong shape, e.g. {wrong[:3]}")
        raise NSAError("masks do not fit this model: " + "; ".join(parts)
                       + ". Use masks produced on the same model.")


def apply_masks(model, masks: dict, weights: dict | None = None):
    """Zero every masked entry in place; with `weights` (SparseGPT), copy those pruned weights in first."""
    import torch
    check_masks(model, masks)
    params = dict(model.named_parameters())
    with torch.no_grad():
        if weights:
            for name, w in weights.items():
                if name not in params:
                    raise NSAError(f"weights name {name!r}, which is not a parameter of this model")
                params[name].copy_(w.to(params[name].dtype))
        for name, m in masks.items():
            p = params[name]
            p.masked_fill_(m.to(device=p.device, dtype=torch.bool), 0)
    return model


def pruned_copy(model, masks: dict, weights: dict | None = None):
    """A deep copy of `model` with the masks applied; `model` is untouched."""
    check_masks(model, masks)
    return apply_masks(copy.deepcopy(model), masks, weights)


def check_mask_files(masks: str | None, weights: str | None) -> None:
    """Command-line check before a model loads: the --masks/--weights files exist, and --weights comes with
    --masks (SparseGPT's updated weights only make sense with the masks they belong to)."""
    for name, path in (("--masks", masks), ("--weights", weights)):
        if path and not Path(path).is_file():
            raise NSAError(f"{name} file {path} does not exist")
    if weights and not masks:
        raise NSAError("--weights needs --masks")
