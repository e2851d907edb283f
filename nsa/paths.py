"""Where things live on disk: the data dir, the cache dir, the embedded demo assets."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = PROJECT_ROOT / "nsa" / "demo"
DEMO_MODEL_DIR = DEMO_DIR / "model"
DEMO_DATA_DIR = DEMO_DIR / "data"


def data_dir() -> Path | None:
    """Local datasets folder (`NSA_DATA_DIR`), or None when unset. JSONL layout: `<name>/<split>.jsonl`."""
    value = os.environ.get("NSA_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def models_dir() -> Path | None:
    """Local models folder (`NSA_MODELS_DIR`): transformers folders and GGUF files the app lists; None when unset."""
    value = os.environ.get("NSA_MODELS_DIR")
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    """Root of runs, dense results, calibration sets and the job store (`NSA_CACHE_DIR`, default `cache/`)."""
    value = os.environ.get("NSA_CACHE_DIR")
    path = Path(value).expanduser() if value else PROJECT_ROOT / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def allowed_dirs() -> list[Path]:
    """Folders a path typed into the app may point into: the data, models and cache folders and
    NSA_ALLOWED_DIRS (an os.pathsep list). Unset variables simply contribute nothing."""
    dirs = [data_dir(), models_dir(), cache_dir()]
    dirs += [Path(p) for p in os.environ.get("NSA_ALLOWED_DIRS", "").split(os.pathsep) if p.strip()]
    return [d.expanduser().resolve() for d in dirs if d is not None]
