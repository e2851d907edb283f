"""nsa.masks: load, check, apply in place (with SparseGPT weights, FLAP biases); files that are not masks are
refused."""
from __future__ import annotations

import pytest
import torch

from nsa.errors import NSAError
from nsa.masks import apply_masks, check_masks, load_masks


@pytest.fixture
def ref_model(reference_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(reference_dir / "model", dtype=torch.float32)


def test_apply_reference_masks(ref_model, reference_dir):
    masks = load_masks(reference_dir / "masks" / "wanda__unstructured.safetensors")
    before = {k: v.clone() for k, v in ref_model.named_parameters()}
    apply_masks(ref_model, masks)
    params = dict(ref_model.named_parameters())
    for k, m in masks.items():
        assert torch.all(params[k][m.bool()] == 0)
        assert torch.equal(params[k][~m.bool()], before[k][~m.bool()])


def test_apply_with_sparsegpt_weights(ref_model, reference_dir):
    from safetensors.torch import load_file
    masks = load_masks(reference_dir / "masks" / "sparsegpt__unstructured.safetensors")
    weights = load_file(str(reference_dir / "weights" / "sparsegpt__unstructured.safetensors"))
    apply_masks(ref_model, masks, weights)
    params = dict(ref_model.named_parameters())
    for k, w in weights.items():
        assert torch.equal(params[k], w)


def test_apply_creates_a_missing_linear_bias(ref_model):
    """FLAP's compensation: a `<Linear>.bias` weight for a Linear built without a bias creates that bias; any other
    unknown name (or a wrong size) is refused."""
    name = "model.layers.0.self_attn.o_proj.bias"
    out_features = ref_model.model.layers[0].self_attn.o_proj.out_features
    bias = torch.arange(out_features, dtype=torch.float32)
    apply_masks(ref_model, {}, {name: bias})
    assert torch.equal(dict(ref_model.named_parameters())[name].detach(), bias)
    for bad in ({"model.layers.0.mlp.nope.bias": bias}, {"model.layers.0.mlp.down_proj.bias": torch.zeros(3)},
                {"model.layers.0.input_layernorm.bias": bias}):
        with pytest.raises(NSAError, match="not a parameter of this model"):
            apply_masks(ref_model, {}, bad)


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


def test_files_that_are_not_masks_are_refused(tmp_path):
    """An empty masks file would evaluate the dense model as "pruned"; float tensors are not masks."""
    from safetensors.torch import save_file

    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(NSAError, match="holds no masks"):
        load_masks(tmp_path / "empty.safetensors")
    save_file({"w": torch.rand(2, 2)}, str(tmp_path / "float.safetensors"))
    with pytest.raises(NSAError, match="not a 0/1 mask"):
        load_masks(tmp_path / "float.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(NSAError, match="cannot read masks"):
        load_masks(tmp_path / "junk.safetensors")
