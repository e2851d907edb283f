"""nsa.masks: load, check, apply (with SparseGPT weights), pruned copy."""
from __future__ import annotations

import pytest
import torch

from nsa.errors import NSAError
from nsa.masks import apply_masks, check_masks, load_masks, pruned_copy


@pytest.fixture
def ref_model(reference_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(reference_dir / "model", dtype=torch.float32)


def test_apply_reference_masks(ref_model, reference_dir):
    masks = load_masks(reference_dir / "masks" / "wanda__unstructured.safetensors")
    before = {k: v.clone() for k, v in ref_model.named_parameters()}
    copy = pruned_copy(ref_model, masks)
    params = dict(copy.named_parameters())
    for k, m in masks.items():
        assert torch.all(params[k][m.bool()] == 0)
        assert torch.equal(params[k][~m.bool()], before[k][~m.bool()])
    for k, v in ref_model.named_parameters():  # original untouched
        assert torch.equal(v, before[k])
    apply_masks(ref_model, masks)
    assert torch.equal(dict(ref_model.named_parameters())[k], params[k])


def test_apply_with_sparsegpt_weights(ref_model, reference_dir):
    from safetensors.torch import load_file
    masks = load_masks(reference_dir / "masks" / "sparsegpt__unstructured.safetensors")
    weights = load_file(str(reference_dir / "weights" / "sparsegpt__unstructured.safetensors"))
    apply_masks(ref_model, masks, weights)
    params = dict(ref_model.named_parameters())
    for k, w in weights.items():
        assert torch.equal(params[k], w)


def test_mismatched_masks_name_first_problems(ref_model):
    masks = {"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2, dtype=torch.uint8),
             "model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3, dtype=torch.uint8)}
    with pytest.raises(NSAError) as err:
        check_masks(ref_model, masks)
    assert "model.layers.9.mlp.up_proj.weight" in str(err.value) and "wrong shape" in str(err.value)


def test_load_masks_missing(tmp_path):
    with pytest.raises(NSAError, match="does not exist"):
        load_masks(tmp_path / "nothing.safetensors")
    with pytest.raises(NSAError, match="does not exist"):
        load_masks(tmp_path)  # a run folder without masks
