"""SparseGPT's fast path (one Hessian per input, Linears sharing it swept together over stacked rows) gives the
same masks bit for bit, and the same weights, as the reference path (one Hessian and one sweep per Linear)."""
from __future__ import annotations

import json

import pytest
import torch

from pruners import PruneConfig, prune
from pruners.method import LayerContext, Target
from pruners.methods.sparsegpt import METHOD, _factor, _reference_sweep, _stacked_sweep
from pruners.stats import InputStats
from tests.conftest import ROOT

from .conftest import tiny_model

DEMO_CALIB = ROOT / "nsa" / "demo" / "data" / "generic_calib.jsonl"


def _assert_same(fast, ref):
    assert list(fast.masks) == list(ref.masks)
    for k in ref.masks:
        assert torch.equal(fast.masks[k], ref.masks[k]), k
        rel = float((fast.weights[k] - ref.weights[k]).norm() / ref.weights[k].norm())
        assert rel <= 1e-5, (k, rel)


def _both(make_model, calib, **cfg):
    opts = cfg.pop("options", {})
    fast = prune(make_model(), calib, PruneConfig(method="sparsegpt", options=dict(opts), **cfg))
    ref = prune(make_model(), calib, PruneConfig(method="sparsegpt", options={**opts, "shared_hessian": False}, **cfg))
    return fast, ref


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("group,block_size", [("block", 128), ("block", 8), ("row", 8), ("layer", 8)])
def test_tiny_llama_fast_equals_per_linear(calib_ids, pattern, group, block_size):
    fast, ref = _both(lambda: tiny_model("llama"), calib_ids, pattern=pattern,
                      options={"group": group, "block_size": block_size})
    _assert_same(fast, ref)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_stories260k_fast_equals_per_linear(stories_dir, pattern):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(stories_dir)
    texts = [json.loads(line)["text"] for line in DEMO_CALIB.read_text().splitlines()]
    ids = tok(" ".join(texts[:200]), return_tensors="pt").input_ids[0]
    calib = ids[: 8 * 64].reshape(8, 64)  # real text; 5 layers, GQA (k/v have half q's rows)
    fast, ref = _both(lambda: AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32), calib,
                      pattern=pattern, options={"block_size": 32})
    _assert_same(fast, ref)
    assert 0.5 <= fast.stats["overall_sparsity"] <= 0.52


def test_stacked_sweep_keeps_each_linears_comparison_group():
    """Rows of differently scaled Linears: a threshold over the stacked rows would prune mostly the small one."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 24, generator=g)
    stats = InputStats(24, "cpu", hessian=True, activations=False)
    stats.add_batch(x)
    Ws = [torch.randn(10, 24, generator=g), 100 * torch.randn(6, 24, generator=g), torch.randn(3, 24, generator=g)]
    Hinv, _ = _factor(stats, "cpu", 0.01, "test")
    refs = []
    for W in Ws:
        w = W.clone()
        refs.append((_reference_sweep(w, Hinv, 0.5, None, "block", 8), w))
    opts = PruneConfig("sparsegpt", options={"block_size": 8}).options
    ctx = LayerContext(sparsity=0.5, nm=None, options=opts, model=None)
    got = [(r.mask, r.weight) for r in METHOD.prune([Target(f"m{i}", W.clone()) for i, W in enumerate(Ws)], stats, ctx)]
    for (m, w), (rm, rw) in zip(got, refs):
        assert torch.equal(m, rm) and torch.equal(w, rw)
        assert 0.5 <= float(m.float().mean()) <= 0.55  # the large Linear is not spared by the small one
    stacked = torch.cat(Ws)
    one_group = _stacked_sweep(stacked, Hinv, [(0, 19)], 0.5, None, "block", 8)
    assert float(one_group[10:16].float().mean()) < 0.2  # what a single stacked group would have done


def test_dead_inputs_zeroed_and_pruned(calib_ids):
    model = tiny_model("llama")
    with torch.no_grad():  # input 3 of q/k/v is always 0: rmsnorm weight 0 makes H_33 = 0
        model.model.layers[0].input_layernorm.weight[3] = 0
    fast, ref = _both(lambda: _copy(model), calib_ids)
    _assert_same(fast, ref)
    for p in ("q_proj", "k_proj", "v_proj"):
        k = f"model.layers.0.self_attn.{p}.weight"
        assert fast.masks[k][:, 3].all() and torch.all(fast.weights[k][:, 3] == 0)


def _copy(model):
    import copy
    return copy.deepcopy(model)
