"""Load a causal LM and its tokenizer from `demo`, a local folder, a GGUF file or a (cached) hub id; key it by
content.

A model name is checked once (`check_model_name`): `demo`, an existing local path (stored absolute), or a
hub id of the form `org/name`. A `.gguf` file (or a folder holding exactly one) is converted once into a
normal model folder in the cache (`nsa.gguf`). Pickled checkpoints (`pytorch_model.bin`) are refused: loading
a pickle runs code. Model code from the hub never runs unless `trust_remote_code` is asked for.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nsa import gguf
from nsa.artifacts import digest, sha256_file
from nsa.errors import NSAError
from nsa.hub import ensure_offline_if_unreachable, is_offline
from nsa.paths import DEMO_MODEL_DIR, cache_dir, models_dir

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
WEIGHT_SUFFIXES = (".json", ".safetensors", ".model", ".txt")
_UNKEYED = ("gguf.json", "manifest.json")  # a converted GGUF's provenance and manifest: times, not the model
PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MAX_NAME = 1024


def looks_local(model_id: str) -> bool:
    return (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id
            or model_id.lower().endswith(".gguf") or Path(model_id).expanduser().exists())


def check_model_name(name: str) -> str:
    """The normalised model name: "demo", an absolute local path, or a hub id; anything else is an NSAError."""
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise NSAError("no model given: pass 'demo', a local folder, a .gguf file or a hub id like 'org/name'",
                       "model")
    if len(name) > MAX_NAME or "\x00" in name:
        raise NSAError(f"a model name of {len(name)} characters is not a path or a hub id", "model")
    if name == "demo":
        return name
    if looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise NSAError(f"model path {path} does not exist: check the path, or give a hub id like 'org/name'",
                           "model")
        return str(path.resolve())
    if not HUB_ID.match(name):
        raise NSAError(f"{name[:80]!r} is neither an existing local path nor a hub id of the form 'org/name'",
                       "model")
    return name


def resolve_model_dir(model_id: str, progress=None) -> Path:
    """The folder holding the model's files (a GGUF file is converted first); NSAError when it is unusable."""
    model_id = check_model_name(model_id)
    if model_id == "demo":
        if not (DEMO_MODEL_DIR / "config.json").is_file():
            raise NSAError(f"the demo model is not built yet ({DEMO_MODEL_DIR} has no config.json): "
                           "run `python -m nsa demo build` first")
        return DEMO_MODEL_DIR
    if looks_local(model_id):
        path = Path(model_id)
        file = gguf.find_gguf(path)
        if file is not None:
            return gguf.convert_gguf(file, cache_dir(), progress=progress)
        return _check_folder(path)
    return _hub_snapshot(model_id)


def _check_folder(path: Path) -> Path:
    if not path.is_dir():
        raise NSAError(f"model path {path} is a file: give a folder written by save_pretrained or a .gguf file")
    if not (path / "config.json").is_file():
        raise NSAError(f"model folder {path} has no config.json: give a folder written by save_pretrained")
    if not any(path.glob("*.safetensors")):
        pickles = [p for p in PICKLES if (path / p).is_file()]
        if pickles:
            raise NSAError(f"model folder {path} holds only {pickles[0]}, a pickle (loading it could run code), "
                           "which this tool refuses: convert it once to safetensors, e.g. "
                           "`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, "
                           "safe_serialization=True)` on a machine you trust")
        raise NSAError(f"model folder {path} has no *.safetensors weights")
    return path.resolve()


def _hub_snapshot(model_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    ensure_offline_if_unreachable()
    try:
        return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - not cached: try the hub, or say why not
        if is_offline():
            raise NSAError(f"hub id {model_id!r} is not in the local Hugging Face cache and the hub is "
                           "unreachable (offline): download it on a machine with internet, or give a local "
                           "folder or .gguf file") from None
    try:
        return Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001
        raise NSAError(f"cannot download {model_id!r} from the hub: {str(err)[:300]}") from None


def load_model(model_id: str, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False,
               progress=None):
    """(model in eval mode on `device`, tokenizer). Bad id/path → NSAError at once.

    The tokenizer is None when the folder has no tokenizer files at all (a weights-only checkpoint such as
    the parity reference model): such a model can be pruned with token ids but not fed text.
    """
    if dtype not in DTYPES:
        raise NSAError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = resolve_model_dir(model_id, progress)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code, use_safetensors=True)
    except (ValueError, OSError) as err:
        raise NSAError(f"cannot load {model_id!r} as a causal LM: {str(err)[:300]}") from None
    tokenizer = None
    if any((path / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception as err:  # noqa: BLE001 - any tokenizer failure is the user's file
            raise NSAError(f"cannot load the tokenizer of {model_id!r} from {path}: {str(err)[:300]}") from None
    model.to(device).eval()
    return model, tokenizer


def check_device(device: str) -> None:
    """`cpu`, `cuda`, `cuda:N` that exists on this machine, or `mps` when available; else a clear NSAError."""
    import torch

    if not isinstance(device, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise NSAError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps", "device")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NSAError(f"this machine has no CUDA GPU for {device!r} (torch {torch.__version__} sees none); "
                           "use cpu", "device")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise NSAError(f"{device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)",
                           "device")
    if device == "mps" and not torch.backends.mps.is_available():
        raise NSAError("Apple's Metal backend (mps) is not available on this machine; use cpu", "device")


@lru_cache(maxsize=64)
def _dir_key(path: str, stamp: tuple) -> str:
    parts = [(str(p.relative_to(path)), sha256_file(p)) for p in sorted(Path(path).rglob("*"))
             if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in _UNKEYED]
    return digest(parts, 16)


def model_key(model_id: str) -> str:
    """Content hash (16 hex chars) of the model's config, tokenizer and weight files: same files, same key."""
    path = resolve_model_dir(model_id)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file())
    return _dir_key(str(path), stamp)


def local_model_key(model_id: str) -> str | None:
    """`model_key` for the demo, local folders and GGUF files (so a model changed in place is a new run); None
    for hub ids (keyed by name: their cached snapshot is what runs) and for paths that do not resolve (the
    job reports those when it loads the model). A GGUF file is keyed by its own content, without converting."""
    if model_id != "demo" and not looks_local(model_id):
        return None
    file = gguf.find_gguf(Path(model_id)) if model_id != "demo" else None
    if file is not None:
        return "gguf-" + sha256_file(file)[:16]
    try:
        return model_key(model_id)
    except NSAError:
        return None


# --- what the app's picker lists --------------------------------------------------------------------------
SUGGESTED_HUB_MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
                        "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B")


@dataclass(frozen=True)
class ModelEntry:
    """One model the app offers: what to pass as `model`, how to show it."""

    model: str  # "demo", an absolute path, or a hub id
    kind: str  # demo | folder | gguf | hub
    family: str  # config model_type or GGUF architecture ("?" when unknown)
    size_bytes: int | None
    parameters: int | None
    available: bool  # False: a hub id that needs a download (not in the local cache)
    note: str = ""

    @property
    def label(self) -> str:
        size = f" · {self.size_bytes / 1e6:,.0f} MB" if self.size_bytes else ""
        params = f" · {self.parameters / 1e6:,.1f}M parameters" if self.parameters else ""
        name = "demo (synthetic)" if self.kind == "demo" else (Path(self.model).name if self.kind != "hub"
                                                                else self.model)
        where = {"gguf": "GGUF", "folder": "folder", "demo": "", "hub": "hub"}[self.kind]
        status = "" if self.available else " · needs a download"
        return f"{name} · {self.family}{params}{size}{' · ' + where if where else ''}{status}{self.note}"


def local_models() -> list[ModelEntry]:
    """The demo, then every transformers folder and GGUF file directly under `NSA_MODELS_DIR` (or one level
    down), with family and size; unreadable entries are listed with a note rather than hidden."""
    out = [_folder_entry(DEMO_MODEL_DIR, "demo")]
    root = models_dir()
    if root is None or not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        if path.is_dir() and (path / "config.json").is_file():
            out.append(_folder_entry(path, "folder"))
        candidates = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf")) if path.is_dir() else []
        for file in candidates:
            out.append(_gguf_entry(file))
    return out


def hub_suggestions() -> list[ModelEntry]:
    """Well-known small hub models, marked available when their snapshot is in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    out = []
    for model_id in SUGGESTED_HUB_MODELS:
        cached = isinstance(try_to_load_from_cache(model_id, "config.json"), str)
        out.append(ModelEntry(model_id, "hub", "?", None, None, cached))
    return out


def _folder_entry(path: Path, kind: str) -> ModelEntry:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelEntry(str(path) if kind != "demo" else "demo", kind, "?", None, None, False,
                          " · config.json unreadable")
    size = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    return ModelEntry("demo" if kind == "demo" else str(path), kind, str(config.get("model_type", "?")),
                      size or None, _parameters(config), kind == "demo" or size > 0,
                      "" if size or kind == "demo" else " · no safetensors weights")


def _gguf_entry(file: Path) -> ModelEntry:
    try:
        info = gguf.inspect_gguf(file)
    except NSAError as err:
        return ModelEntry(str(file), "gguf", "?", file.stat().st_size, None, False, f" · {str(err)[:80]}")
    return ModelEntry(str(info.path), "gguf", info.architecture, info.size, info.n_parameters, True)


def _parameters(config: dict) -> int | None:
    """Parameters of a Llama-like config (embeddings, attention, MLP, norms), or None when the shape is unknown."""
    try:
        h, n, ffn, v = (int(config[k]) for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                 "vocab_size"))
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    attention = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attention + 3 * h * ffn + 2 * h
    embeddings = v * h * (1 if config.get("tie_word_embeddings", True) else 2)
    return n * per_layer + embeddings + h
