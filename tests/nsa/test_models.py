"""nsa.models: local folders, demo, hub ids while offline; content keys."""
from __future__ import annotations

import shutil
import time

import pytest

from nsa.errors import NSAError
from nsa.models import load_model, model_key
from nsa.paths import DEMO_MODEL_DIR


def test_load_local_folder(stories_dir):
    model, tok = load_model(str(stories_dir))
    assert model.config.model_type == "llama" and not model.training
    assert tok is not None and tok("Once upon a time")["input_ids"]


def test_load_dtype(stories_dir):
    import torch
    model, _ = load_model(str(stories_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(NSAError, match="unknown dtype"):
        load_model(str(stories_dir), dtype="float8")


def test_weights_only_folder_has_no_tokenizer(reference_dir):
    model, tok = load_model(str(reference_dir / "model"))
    assert tok is None and model.config.num_hidden_layers == 2


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(NSAError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(NSAError, match="no config.json"):
        load_model(str(tmp_path))


def test_uncached_hub_id_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(NSAError, match="not in the local Hugging Face cache"):
        load_model("nobody/definitely-not-cached")
    assert time.perf_counter() - t0 < 5


def test_demo_resolves_to_demo_folder():
    if (DEMO_MODEL_DIR / "config.json").is_file():
        model, tok = load_model("demo")
        assert tok is not None
    else:
        with pytest.raises(NSAError, match="demo build"):
            load_model("demo")


def test_model_key_is_content_hash(stories_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stories_dir, copy)
    assert model_key(str(stories_dir)) == model_key(str(copy))
    assert len(model_key(str(copy))) == 16
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("{", '{"x": 1, ', 1))
    assert model_key(str(copy)) != model_key(str(stories_dir))
