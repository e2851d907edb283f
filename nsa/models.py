"""Load a causal LM and its tokenizer from `demo`, a local folder or a (cached) hub id; key it by content."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from nsa.atomic import sha256_file
from nsa.errors import NSAError
from nsa.paths import DEMO_MODEL_DIR

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def looks_local(model_id: str) -> bool:
    return (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id
            or Path(model_id).expanduser().exists())


def resolve_model_dir(model_id: str) -> Path:
    """The folder holding the model's files; raises NSAError when it does not exist or is not cached."""
    if not model_id:
        raise NSAError("no model given: pass 'demo', a local folder or a Hugging Face hub id")
    if model_id == "demo":
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise NSAError(f"the demo model is not built yet ({DEMO_MODEL_DIR} has no config.json): "
                           "run `python -m nsa demo build` first")
        return DEMO_MODEL_DIR
    if looks_local(model_id):
        path = Path(model_id).expanduser()
        if not path.is_dir():
            raise NSAError(f"model folder {path} does not exist: check the path, or give a hub id like 'org/name'")
        if not (path / "config.json").is_file():
            raise NSAError(f"model folder {path} has no config.json: give a folder written by save_pretrained")
        return path.resolve()
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(model_id, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception:
        from nsa.offline import is_offline
        if is_offline():
            raise NSAError(f"hub id {model_id!r} is not in the local Hugging Face cache and the hub is "
                           "unreachable (offline): download it on a machine with internet, or give a local folder")
        try:
            return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception as err:
            raise NSAError(f"cannot download {model_id!r} from the hub: {err}") from err


def load_model(model_id: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False):
    """(model in eval mode on `device`, tokenizer). Bad id/path → NSAError at once.

    The tokenizer is None when the folder has no tokenizer files at all (a weights-only checkpoint such as
    the parity reference model): such a model can be pruned with token ids but not fed text.
    """
    if dtype not in DTYPES:
        raise NSAError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = resolve_model_dir(model_id)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
    except ValueError as err:
        raise NSAError(f"cannot load {model_id!r} as a causal LM: {err}") from err
    tokenizer = None
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        model.to(device).eval()
        return model, None  # e.g. a weights-only checkpoint: usable with token ids, not with text
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as err:
        raise NSAError(f"cannot load the tokenizer of {model_id!r} from {path}: {err}") from err
    model.to(device).eval()
    return model, tokenizer


@lru_cache(maxsize=64)
def _dir_key(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".model", ".txt"):
            h.update(str(p.relative_to(path)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def model_key(model_id: str) -> str:
    """Content hash (16 hex chars) of the model's config, tokenizer and weight files: same files, same key."""
    path = resolve_model_dir(model_id)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file())
    return _dir_key(str(path), stamp)
