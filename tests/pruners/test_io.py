"""pruners.io: masks/stats/weights round trip."""
from __future__ import annotations

import json

import torch

from pruners import PruneConfig, prune
from pruners.io import load_masks, save_result

from .conftest import tiny_model


def test_save_and_load_roundtrip(tmp_path, calib_ids):
    model = tiny_model("gpt2")
    result = prune(model, calib_ids, PruneConfig(method="sparsegpt"))
    paths = save_result(result, tmp_path, save_weights=True)
    masks = load_masks(paths["masks"])
    assert set(masks) == set(result.masks) and all(torch.equal(masks[k], result.masks[k]) for k in masks)
    stats = json.loads(paths["stats"].read_text())
    assert stats["config"]["method"] == "sparsegpt" and stats["family"] == "gpt2"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_weights_from_model_for_mask_only_methods(tmp_path, calib_ids):
    from safetensors.torch import load_file
    model = tiny_model("opt")
    result = prune(model, calib_ids, PruneConfig(method="wanda"))
    assert result.weights is None
    paths = save_result(result, tmp_path, save_weights=True, model=model)
    weights = load_file(str(paths["weights"]))
    for k, m in result.masks.items():
        assert torch.all(weights[k][m.bool()] == 0)
