"""Every supported family prunes end to end on a tiny model built from a config; stories260K too."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pruners import PruneConfig, PruneError, prune
from pruners.families import decoder_layers, get_family, mlp_sites, mlp_sites_from_names

from .conftest import FAMILY_NAMES, tiny_model


def _check_result(model, result, sparsity, nm=None):
    params = dict(model.named_parameters())
    assert result.masks
    for name, mask in result.masks.items():
        assert name in params and mask.shape == params[name].shape and mask.dtype == torch.uint8
        assert "embed" not in name and "lm_head" not in name and "wte" not in name
        assert torch.all(params[name][mask.bool()] == 0)
        if nm is None:
            assert abs(float(mask.float().mean()) - sparsity) < 0.05, name
        else:
            conv1d = get_family(model).conv1d
            m = mask.t() if conv1d else mask
            groups = m.reshape(m.shape[0], -1, nm[1]).sum(-1)
            assert torch.all(groups == nm[0]), name


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_family_prunes_and_runs(family, method, calib_ids):
    model = tiny_model(family)
    n_layers = len(decoder_layers(model))
    events = []
    result = prune(model, calib_ids, PruneConfig(method=method, sparsity=0.5), progress=events.append)
    _check_result(model, result, 0.5)
    assert len(events) >= n_layers and events[-1].fraction == 1.0
    with torch.no_grad():
        logits = model(input_ids=calib_ids[:1]).logits
    assert torch.isfinite(logits).all()
    assert len(result.stats["layer_times_s"]) == n_layers


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_family_2of4_and_determinism(family, calib_ids):
    a = prune(tiny_model(family), calib_ids, PruneConfig(method="ria", pattern="2:4"))
    model = tiny_model(family)
    b = prune(model, calib_ids, PruneConfig(method="ria", pattern="2:4"))
    _check_result(model, b, 0.5, nm=(2, 4))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_mlp_sites(family):
    model = tiny_model(family)
    sites = mlp_sites(model)
    params = dict(model.named_parameters())
    assert [s.layer for s in sites] == list(range(len(decoder_layers(model))))
    n_neurons = None
    for s in sites:
        for p in s.in_params:
            w = params[p]
            n_neurons = w.shape[1] if s.conv1d else w.shape[0]
        out = params[s.out_param]
        assert (out.shape[0] if s.conv1d else out.shape[1]) == n_neurons
        seen = {}
        h = s.out_module.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 5, dtype=torch.long))
        h.remove()
        # OPT flattens tokens before fc2 ([batch*seq, n]); every other family keeps [batch, seq, n]
        expected = (5, n_neurons) if family == "opt" else (1, 5, n_neurons)
        assert seen["x"].shape == expected
    from_names = mlp_sites_from_names(list(params))
    assert [(s.layer, s.in_params, s.out_param, s.conv1d) for s in from_names] == \
        [(s.layer, s.in_params, s.out_param, s.conv1d) for s in sites]


def test_stories260k(stories_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    for method in ["magnitude", "wanda", "sparsegpt", "ria", "gblm"]:
        m = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32)
        result = prune(m, ids, PruneConfig(method=method, sparsity=0.5))
        _check_result(m, result, 0.5)
        with torch.no_grad():
            assert torch.isfinite(m(input_ids=ids[:1]).logits).all()


def test_unsupported_architecture():
    class Fake(nn.Module):
        config = type("C", (), {"model_type": "bert"})()
    with pytest.raises(PruneError, match="Llama, Mistral, Qwen2, OPT, GPT-2, GPT-NeoX"):
        get_family(Fake())
    with pytest.raises(PruneError, match="supported family"):
        mlp_sites_from_names(["encoder.layer.0.weight"])


def test_model_without_decoder_layers(calib_ids):
    import transformers as tf
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=0, num_attention_heads=4,
                         vocab_size=128)
    model = tf.LlamaForCausalLM(cfg)
    with pytest.raises(PruneError, match="no decoder layers"):
        prune(model, calib_ids, PruneConfig(method="wanda"))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "gblm"])
def test_bfloat16_model(method, calib_ids):
    model = tiny_model("llama").to(torch.bfloat16)
    result = prune(model, calib_ids, PruneConfig(method=method, pattern="2:4"))
    _check_result(model, result, 0.5, nm=(2, 4))
    assert next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=calib_ids[:1]).logits.float()).all()
