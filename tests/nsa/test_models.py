"""nsa.models: local folders, demo, hub ids while offline; content keys."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

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


def test_local_models_lists_demo_folders_and_gguf_files(shared_dir, tmp_path, monkeypatch):
    """The app's picker list: the demo first, then every folder and GGUF file under NSA_MODELS_DIR with its family,
    parameter count and size; a broken entry is listed with a note, not hidden."""
    from nsa.models import local_models

    root = tmp_path / "models"
    root.mkdir()
    (root / "stories260K").symlink_to(shared_dir / "models" / "stories260K")
    (root / "smollm2").symlink_to(shared_dir / "models" / "smollm2-135m-instruct")
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    (root / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    monkeypatch.setenv("NSA_MODELS_DIR", str(root))
    entries = {Path(e.model).name if e.kind != "demo" else "demo": e for e in local_models()}
    assert list(entries)[0] == "demo" and entries["demo"].available
    stories = entries["stories260K"]
    assert (stories.kind, stories.family, stories.available) == ("folder", "llama", True)
    gguf = entries["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert gguf.kind == "gguf" and gguf.family == "llama" and 134e6 < gguf.parameters < 136e6
    assert "GGUF" in gguf.label and "M parameters" in gguf.label and "needs a download" not in gguf.label
    assert entries["broken"].note == " · config.json unreadable" and not entries["broken"].available
    assert entries["cut.gguf"].kind == "gguf" and not entries["cut.gguf"].available and entries["cut.gguf"].note


def test_parameter_count_of_a_config_matches_the_model(stories_dir):
    import json

    from nsa.models import _parameters

    model, _ = load_model(str(stories_dir))
    config = json.loads((stories_dir / "config.json").read_text())
    assert _parameters(config) == sum(p.numel() for p in model.parameters())


def test_hub_suggestions_say_which_need_a_download(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from nsa.models import SUGGESTED_HUB_MODELS, hub_suggestions

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    assert [e.model for e in hub_suggestions()] == list(SUGGESTED_HUB_MODELS)
    assert all(not e.available and e.label.endswith("needs a download") for e in hub_suggestions())
    snapshot = tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct"  # the HF cache layout of one snapshot
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    (snapshot / "snapshots" / "abc123" / "config.json").write_text("{}")
    cached = {e.model: e.available for e in hub_suggestions()}
    assert cached["HuggingFaceTB/SmolLM2-135M-Instruct"] and not cached["Qwen/Qwen2.5-0.5B-Instruct"]
