"""ShortGPT: parity with the authors' code (tests/pruners/reference/shortgpt), a removed layer passes its input
through, the smaller stock model (every family), and bad input."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pruners import PruneConfig, PruneError, prune
from pruners.families import decoder_layers
from pruners.methods.shortgpt import layers_to_remove

from .conftest import FAMILY_NAMES, REFERENCE, assert_saved_smaller, reference_arithmetic, tiny_model


@pytest.mark.parametrize("case,model_dir,calib,sparsity", [
    ("stories260K", "models/stories260K", REFERENCE / "stories260K-c4-calib.safetensors", 0.4),
    ("tiny-llama", "reference/tiny-llama/model", None, 0.5),
])
def test_shortgpt_matches_reference(shared_dir, reference_dir, case, model_dir, calib, sparsity):
    """Block influence sums bit for bit (Python floats), the removal order and the removed layers."""
    ref = json.loads((REFERENCE / "shortgpt" / case / "shortgpt.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(shared_dir / model_dir, dtype=torch.float32).eval()
    ids = load_file(str(calib or reference_dir / "calib.safetensors"))["input_ids"]
    result = prune(model, ids, PruneConfig("shortgpt", sparsity))
    info = result.stats["structured"]
    if reference_arithmetic():
        assert [x.hex() for x in info["block_influence"]] == ref["block_influence_sum_float64_hex"]
    else:  # another CPU's matmuls round differently (conftest.OTHER_ARITHMETIC): equal to float32 precision
        assert info["block_influence"] == pytest.approx(ref["block_influence_sum"], rel=1e-5)
    assert info["order_least_influential_first"] == ref["prune_order_least_important_first"]
    assert info["removed_layers"] == sorted(ref["removed_layers"])
    assert len(decoder_layers(model)) == len(ref["block_influence_sum"])  # masked, not yet removed


def test_removed_layers_pass_their_input_through_and_shrink(stories, tmp_path):
    model = copy.deepcopy(stories[0])
    ids = load_file(str(REFERENCE / "stories260K-c4-calib.safetensors"))["input_ids"][:4, :64]
    result = prune(model, ids, PruneConfig("shortgpt", 0.4))
    removed = result.stats["structured"]["removed_layers"]
    assert len(removed) == 2 and result.stats["layer_sparsity"] == [float(i in removed) for i in range(5)]
    seen = {}
    layer = decoder_layers(model)[removed[0]]
    hooks = [layer.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("in", k.get("hidden_states", a and a[0])),
                                             with_kwargs=True),
             layer.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out[0] if isinstance(out, tuple) else out))]
    with torch.no_grad():
        model(ids[:1])
    for h in hooks:
        h.remove()
    assert torch.equal(seen["in"], seen["out"])
    loaded, summary = assert_saved_smaller(model, result.masks, tmp_path, ids[:2])
    assert loaded.config.num_hidden_layers == 3 and summary["removed_layers"] == removed


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if f not in ("llama", "mistral")])
def test_every_family_drops_layers(family, calib_ids, tmp_path):
    """Biases of the removed layer's Linears are zeroed (in `weights`), so biased families pass through too."""
    model = tiny_model(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    result = prune(model, calib_ids, PruneConfig("shortgpt", 0.5))
    assert result.weights and all(not w.any() for w in result.weights.values())
    loaded, _ = assert_saved_smaller(model, result.masks, tmp_path, calib_ids)
    assert loaded.config.num_hidden_layers == 1


def test_layer_count_rounds_to_nearest():
    assert [layers_to_remove(s, 4) for s in (0.1, 0.2, 0.3, 0.5, 0.75)] == [0, 1, 1, 2, 3]
    assert layers_to_remove(0.4, 5) == 2 and layers_to_remove(0.5, 5) == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=0.8), r"sparsity: sparsity 0.8 would remove every decoder layer \(2 of 2\)"),
    (dict(pattern="2:4"), "pattern: shortgpt is a structured method"),
    (dict(options={"window": 0}), "options.window: must be at least 1"),
])
def test_bad_shortgpt_input(kwargs, match, calib_ids):
    with pytest.raises(PruneError, match=match):
        prune(tiny_model("llama"), calib_ids, PruneConfig(**({"method": "shortgpt"} | kwargs)))
