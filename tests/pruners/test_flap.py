"""FLAP: parity with the authors' code (tests/pruners/reference/flap), whole key/value groups under GQA, the smaller
stock model, and bad input."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pruners import PruneConfig, PruneError, prune
from pruners.apply import apply_result
from pruners.shrink import check_shrinkable, shrink

from .conftest import REFERENCE, assert_saved_smaller, reference_arithmetic, tiny_model

FLAP_REF = REFERENCE / "flap" / "tiny-mha-hd128"
RUNS = json.loads((FLAP_REF / "flap.json").read_text())["runs"]


@pytest.fixture(scope="module")
def stories_calib():
    return load_file(str(REFERENCE / "stories260K-c4-calib.safetensors"))["input_ids"]


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r['metric']}-{r['structure']}-{r['pruning_ratio']}")
def test_flap_matches_reference(run, stories_calib):
    """Removed heads and MLP channels exactly; compensation biases bit for bit (same float32 operations).
    `stock_heads` false: the reference's head count even where a stock LlamaConfig would refuse it (UL-UM 0.5)."""
    model = AutoModelForCausalLM.from_pretrained(FLAP_REF / "model", dtype=torch.float32).eval()
    config = PruneConfig("flap", run["pruning_ratio"], options={"metric": run["metric"], "structure": run["structure"],
                                                                "stock_heads": False})
    result = prune(model, stories_calib, config)
    ref = load_file(str(FLAP_REF / run["file"]))
    layers = result.stats["structured"]["layers"]
    for i, expected in enumerate(run["layers"]):
        assert layers[i]["removed_heads"] == expected["removed_heads"]
        kept = ~result.masks[f"model.layers.{i}.mlp.gate_proj.weight"][:, 0].bool()
        assert torch.equal(kept, ref[f"mlp_keep.{i}"].bool())
    biases = {k: v for k, v in ref.items() if k.endswith(".bias")}
    assert set(biases) == set(result.weights)
    if reference_arithmetic():
        assert all(torch.equal(result.weights[k], v) for k, v in biases.items())
    else:  # another CPU's matmuls round differently (conftest.OTHER_ARITHMETIC): equal to float32 precision
        for k, v in biases.items():
            torch.testing.assert_close(result.weights[k], v, rtol=1e-5, atol=1e-6)
    assert result.stats["overall_sparsity"] == pytest.approx(run["removed_fraction_of_linear_weights"], abs=1e-6)


def test_stock_heads_removes_only_head_counts_the_config_accepts(stories_calib, tmp_path):
    """Reference model: hidden 20, 5 heads. At UL-UM 0.5 the reference removes 2 heads, but a LlamaConfig with 3
    heads is invalid (20 % 3): by default 1 head goes (said in stats.json) and the attention really shrinks; with
    the reference count the saved model keeps its attention shape (zeroed heads, plus the zero q/k/v biases of
    Llama's attention_bias switch: larger than the dense model here), still loadable and equal."""
    ids = stories_calib[:2, :32]
    model = AutoModelForCausalLM.from_pretrained(FLAP_REF / "model", dtype=torch.float32).eval()
    result = prune(model, stories_calib, PruneConfig("flap", 0.5))
    info = result.stats["structured"]
    assert [len(layer["removed_heads"]) for layer in info["layers"]] == [1, 1, 1]
    assert "1 of the floor(sparsity·5) = 2 key/value groups" in info["note"]
    loaded, summary = assert_saved_smaller(model, result.masks, tmp_path / "stock", ids)
    assert loaded.config.num_attention_heads == 4 and summary["kept_full_shape"] == []
    model = AutoModelForCausalLM.from_pretrained(FLAP_REF / "model", dtype=torch.float32).eval()
    result = prune(model, stories_calib, PruneConfig("flap", 0.5, options={"stock_heads": False}))
    loaded, summary = assert_saved_smaller(model, result.masks, tmp_path / "reference", ids, smaller=False)
    assert loaded.config.num_attention_heads == 5 and "3 heads are not a head count" in summary["kept_full_shape"][0]


def test_pruned_model_is_dense_plus_masks_and_weights(stories, stories_calib):
    """What prune() leaves in memory is exactly the dense model with the result applied (masks + new biases)."""
    dense = copy.deepcopy(stories[0])
    pruned = copy.deepcopy(dense)
    result = prune(pruned, stories_calib, PruneConfig("flap", 0.5))
    applied = apply_result(copy.deepcopy(dense), result.masks, result.weights)
    assert applied.model.layers[0].self_attn.o_proj.bias is not None
    ids = stories_calib[:2, :32]
    with torch.no_grad():
        assert torch.equal(pruned(ids).logits, applied(ids).logits)


def test_gqa_removes_whole_key_value_groups_and_shrinks(stories, stories_calib, tmp_path):
    """stories260K: 8 query heads in 4 key/value groups of head size 8; at 0.5 two groups (four heads) go per layer."""
    model = copy.deepcopy(stories[0])
    result = prune(model, stories_calib, PruneConfig("flap", 0.5))
    info = result.stats["structured"]
    assert info["shrinkable"] and info["kv_groups"] == 4 and info["heads_per_group"] == 2
    for i, layer in enumerate(info["layers"]):
        groups = layer["removed_kv_groups"]
        assert len(groups) == 2 and layer["removed_heads"] == [2 * g + j for g in groups for j in (0, 1)]
        assert layer["removed_mlp_channels"] == 86  # floor(172 · 0.5)
        q = result.masks[f"model.layers.{i}.self_attn.q_proj.weight"].bool()
        k = result.masks[f"model.layers.{i}.self_attn.k_proj.weight"].bool()
        o = result.masks[f"model.layers.{i}.self_attn.o_proj.weight"].bool()
        for g in range(4):
            gone = g in groups
            assert bool(k[8 * g:8 * g + 8].all()) == gone and bool(k[8 * g:8 * g + 8].any()) == gone
            assert bool(q[16 * g:16 * g + 16].all()) == gone and bool(o[:, 16 * g:16 * g + 16].all()) == gone
    loaded, summary = assert_saved_smaller(model, result.masks, tmp_path, stories_calib[:2, :48])
    cfg = loaded.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (4, 2, 8, 86)
    assert cfg.attention_bias and cfg.mlp_bias  # o_proj/down_proj carry the compensation; the other biases are 0
    assert not loaded.model.layers[0].self_attn.q_proj.bias.detach().any()
    assert summary["kept_full_shape"] == []


def test_adaptive_structure_keeps_the_full_shape(calib_ids, tmp_path):
    model = tiny_model("llama")
    result = prune(model, calib_ids, PruneConfig("flap", 0.3, options={"structure": "AL-AM"}))
    info = result.stats["structured"]
    assert not info["shrinkable"] and "not shrinkable" in info["note"]
    counts = [layer["removed_mlp_channels"] for layer in info["layers"]]
    assert len(set(counts)) > 1
    small, summary = shrink(model, result.masks)
    assert small.config.intermediate_size == 64 and "per-layer counts differ" in summary["kept_full_shape"][0]
    with torch.no_grad():
        assert torch.allclose(small(calib_ids).logits, model(calib_ids).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_classes_without_output_biases(family, calib_ids, tmp_path):
    """Mistral / Qwen2 have no o_proj/down_proj bias: refused before pruning with compensation, fine without."""
    model = tiny_model(family)
    with pytest.raises(PruneError, match="options.bias_compensation: .* no o_proj/down_proj bias"):
        check_shrinkable(model, PruneConfig("flap").options)
    compensated = prune(tiny_model(family), calib_ids, PruneConfig("flap", 0.5))
    with pytest.raises(PruneError, match="cannot hold it; for FLAP prune with bias_compensation false"):
        shrink(_applied(family, compensated), compensated.masks)
    config = PruneConfig("flap", 0.5, options={"bias_compensation": False})
    result = prune(model, calib_ids, config)
    assert result.weights is None
    assert_saved_smaller(model, result.masks, tmp_path, calib_ids)


def _applied(family, result):
    return apply_result(tiny_model(family), result.masks, result.weights)


def test_uneven_grouped_query_heads_are_refused(calib_ids):
    cfg = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=6,
                      num_key_value_heads=4, head_dim=8, vocab_size=128)
    with pytest.raises(PruneError, match="6 attention heads and 4 key/value heads: 6 is not divisible by 4"):
        prune(LlamaForCausalLM(cfg), calib_ids, PruneConfig("flap"))


@pytest.mark.parametrize("family,kwargs,match", [
    ("llama", dict(pattern="2:4"), "pattern: flap is a structured method .* N:M patterns apply to unstructured"),
    ("llama", dict(sparsity_profile="owl"), "sparsity_profile: sparsity profile owl sets per-layer sparsities"),
    ("llama", dict(options={"structure": "AL-AM"}, sparsity=0.7),
     "sparsity: flap AL-AM at sparsity 0.7 would remove every attention head .* of decoder layer 1"),
    ("llama", dict(options={"metric": "L2"}), "options.metric: must be one of WIFV, WIFN, IFV"),
    ("opt", {}, "flap removes attention heads .* opt is not supported"),
    ("gpt2", {}, "gpt2 is not supported"),
])
def test_bad_flap_input(family, kwargs, match, calib_ids):
    with pytest.raises(PruneError, match=match):
        prune(tiny_model(family), calib_ids, PruneConfig(**({"method": "flap"} | kwargs)))
