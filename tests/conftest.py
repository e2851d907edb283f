"""Shared test setup: real data from ../shared, offline hub, one torch thread, a private cache dir."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NSA_SHARED_DIR", ROOT.parent / "shared")).resolve()
os.environ.setdefault("NSA_DATA_DIR", str(SHARED / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"../shared not found at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def stories_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="session")
def stories(stories_dir: Path):
    """(model, tokenizer) of the real stories260K checkpoint, fp32, eval mode; shared read-only: tests that
    prune or change weights work on a copy (`nsa.masks.pruned_copy`) or load their own."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(stories_dir)


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "tiny-llama"


@pytest.fixture(autouse=True)
def _one_thread_and_private_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's cache/ and do not fight over the 2 cores."""
    import torch

    torch.set_num_threads(1)
    cache = tmp_path_factory.getbasetemp() / "nsa-cache"
    monkeypatch.setenv("NSA_CACHE_DIR", str(cache))
    yield
