"""Parity with the authors' code on ../shared/reference/tiny-llama (see its README)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pruners import PruneConfig, prune
from pruners.gradients import compute_gradients

PATTERNS = [("unstructured", "unstructured"), ("2:4", "2of4")]


def _load(reference_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(reference_dir / "model", dtype=torch.float32)
    calib = load_file(str(reference_dir / "calib.safetensors"))["input_ids"]
    return model, calib


def _agreement(masks, ref):
    assert set(masks) == set(ref)
    for k in ref:
        assert masks[k].shape == ref[k].shape and masks[k].dtype == torch.uint8
    same = sum(int((masks[k] == ref[k]).sum()) for k in ref)
    return same / sum(v.numel() for v in ref.values())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "ria"])
@pytest.mark.parametrize("pattern,fname", PATTERNS)
def test_exact_parity(reference_dir, method, pattern, fname):
    model, calib = _load(reference_dir)
    result = prune(model, calib, PruneConfig(method=method, pattern=pattern))
    ref = load_file(str(reference_dir / "masks" / f"{method}__{fname}.safetensors"))
    assert _agreement(result.masks, ref) == 1.0
    params = dict(model.named_parameters())
    for k, m in result.masks.items():  # the model really is pruned where the mask says
        assert torch.all(params[k][m.bool()] == 0)


@pytest.mark.parametrize("pattern,fname", PATTERNS)
@pytest.mark.parametrize("shared", [True, False])
def test_sparsegpt_parity(reference_dir, pattern, fname, shared):
    model, calib = _load(reference_dir)
    result = prune(model, calib, PruneConfig(method="sparsegpt", pattern=pattern,
                                             options={"shared_hessian": shared}))
    ref = load_file(str(reference_dir / "masks" / f"sparsegpt__{fname}.safetensors"))
    assert _agreement(result.masks, ref) >= 0.999
    ref_w = load_file(str(reference_dir / "weights" / f"sparsegpt__{fname}.safetensors"))
    assert set(result.weights) == set(ref_w)
    for k, w in ref_w.items():
        assert float((result.weights[k] - w).norm() / w.norm()) < 1e-4, k
        assert torch.isfinite(result.weights[k]).all()


def test_gblm_gradients_match_reference(reference_dir):
    model, calib = _load(reference_dir)
    grads = compute_gradients(model, calib)
    ref = load_file(str(reference_dir / "gradients" / "gblm.safetensors"))
    assert set(grads) == set(ref)
    for k in ref:
        assert grads[k].dtype == torch.float16
        rel = float((grads[k].float() - ref[k].float()).norm() / ref[k].float().norm())
        assert rel < 1e-3, (k, rel)


@pytest.mark.parametrize("pattern,fname", PATTERNS)
def test_gblm_parity(reference_dir, pattern, fname):
    model, calib = _load(reference_dir)
    result = prune(model, calib, PruneConfig(method="gblm", pattern=pattern))
    ref = load_file(str(reference_dir / "masks" / f"gblm__{fname}.safetensors"))
    assert _agreement(result.masks, ref) >= 0.999
