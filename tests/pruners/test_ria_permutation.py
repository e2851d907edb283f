"""RIA channel permutation for N:M: kept and applied, so saved masks are N:M and the function is unchanged."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from nsa.masks import apply_masks
from pruners import PruneConfig, prune
from pruners.errors import PruneError
from pruners.io import save_result
from pruners.methods.ria import ria_score
from pruners.stats import InputStats

from .conftest import tiny_model

PERM = {"channel_permutation": True}


def _is_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    return bool((mask.reshape(mask.shape[0], -1, m).sum(-1) == n).all())


def _permuted_back(masks: dict, records: dict) -> dict:
    """The masks in the dense model's own order (what the reference keeps): undo each applied permutation."""
    back = {k: v.clone() for k, v in masks.items()}
    for name, rec in records.items():
        if not rec["applied"]:
            continue
        idx = torch.tensor(rec["input_index"])
        back[name + ".weight"][:, idx] = masks[name + ".weight"]
        rows = torch.tensor(rec["producer_row_index"])
        for prod in rec["producers_rows_permuted"]:
            back[prod + ".weight"][rows] = masks[prod + ".weight"]
    return back


def _masked(model, masks):
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for k, m in masks.items():
            params[k].masked_fill_(m.bool(), 0)
    return out


@torch.no_grad()
def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def _llama_with_biases():
    """Tiny Llama with attention and MLP biases (random, so permuting them is visible)."""
    import transformers as tf
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, vocab_size=128,
                         attention_bias=True, mlp_bias=True)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


def _qwen2_with_biases():
    model = tiny_model("qwen2")  # q/k/v biases, one kv head shared by 4 query heads
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model


MODELS = {"llama": lambda: tiny_model("llama"), "mistral": lambda: tiny_model("mistral"),
          "qwen2_bias": _qwen2_with_biases, "llama_bias": _llama_with_biases}


@pytest.fixture(scope="module")
def stories_calib(shared_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = shared_dir / "models" / "stories260K"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [json.loads(line)["text"] for line in (shared_dir / "data" / "c4" / "validation_sample.jsonl").open()]
    ids = tok(" ".join(texts[:40]), return_tensors="pt").input_ids[0]
    calib = ids[:8 * 64].reshape(8, 64).clone()
    return model, calib


@pytest.mark.parametrize("which", sorted(MODELS))
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_saved_masks_are_nm_and_function_is_preserved(which, pattern, calib_ids):
    torch.set_num_threads(1)
    n, m = (int(x) for x in pattern.split(":"))
    dense = MODELS[which]()
    model = copy.deepcopy(dense)
    result = prune(model, calib_ids, PruneConfig(method="ria", pattern=pattern, options=PERM))
    records = result.stats["channel_permutation"]
    assert set(records) == {k[:-len(".weight")] for k in result.masks}
    applied = [k for k, r in records.items() if r["applied"]]
    assert applied, "the heuristic never beat the identity order: the test would not exercise the permutation"
    for name, rec in records.items():
        if name.endswith(("down_proj", "o_proj")):
            assert "residual" not in rec.get("reason", "")
            assert rec["retained_score"] >= rec["retained_score_identity"]
        else:
            assert "residual stream" in rec["reason"]
    params = dict(model.named_parameters())
    for k, mask in result.masks.items():  # (a) N:M in the model's own column order, and really zero there
        assert _is_nm(mask, n, m), k
        assert torch.all(params[k][mask.bool()] == 0), k
    ids = calib_ids[:2]
    back = _permuted_back(result.masks, records)
    # (b) same function as the unpermuted model with the reference's (scattered-back) mask
    torch.testing.assert_close(_logits(model, ids), _logits(_masked(dense, back), ids), atol=1e-5, rtol=0)
    # the shipped weights (biases included) rebuild the pruned model from the dense one
    assert set(result.masks) <= set(result.weights)
    rebuilt = apply_masks(copy.deepcopy(dense), result.masks, result.weights)
    torch.testing.assert_close(_logits(rebuilt, ids), _logits(model, ids), atol=0, rtol=0)
    # without the weights the dense order does not match: the permutation really moved columns
    wrong = _masked(dense, result.masks)
    assert not torch.allclose(_logits(wrong, ids), _logits(model, ids), atol=1e-5)


def _layer0_scores(model, calib, alpha=0.5) -> dict:
    """RIA scores of decoder layer 0 of the dense model, statistics accumulated per calibration row."""
    layer = model.model.layers[0]
    stats, handles = {}, []
    for name, mod in layer.named_modules():
        if isinstance(mod, torch.nn.Linear):
            stats[name] = InputStats(mod.in_features, "cpu", hessian=False, activations=True)
            handles.append(mod.register_forward_hook(lambda _m, inp, _o, s=stats[name]: s.add_batch(inp[0])))
    with torch.no_grad():
        for j in range(calib.shape[0]):
            model(input_ids=calib[j:j + 1], use_cache=False)
    for h in handles:
        h.remove()
    mods = dict(layer.named_modules())
    return {f"model.layers.0.{k}.weight": ria_score(mods[k].weight.detach().float(), s, alpha)
            for k, s in stats.items()}


def test_retained_score_not_below_plain_nm_on_stories(stories_calib):
    torch.set_num_threads(1)
    dense, calib = stories_calib
    plain = prune(copy.deepcopy(dense), calib, PruneConfig(method="ria", pattern="2:4"))
    model = copy.deepcopy(dense)
    perm = prune(model, calib, PruneConfig(method="ria", pattern="2:4", options=PERM))
    records = perm.stats["channel_permutation"]
    back = _permuted_back(perm.masks, records)
    scores = _layer0_scores(dense, calib)  # layer 0 sees the same inputs in both runs
    gains = {}
    for k, S in scores.items():
        kept_perm = float(S.double()[~back[k].bool()].sum())
        kept_plain = float(S.double()[~plain.masks[k].bool()].sum())
        assert kept_perm >= kept_plain, k  # (c)
        gains[k] = kept_perm - kept_plain
        if not k.endswith(("down_proj.weight", "o_proj.weight")):
            assert torch.equal(back[k], plain.masks[k]), k  # residual-stream inputs: plain N:M (dense order)
    assert gains["model.layers.0.mlp.down_proj.weight"] > 0 or gains["model.layers.0.self_attn.o_proj.weight"] > 0
    for rec in records.values():
        if rec["applied"]:
            assert rec["retained_score"] > rec["retained_score_identity"]
    for k, mask in perm.masks.items():
        assert _is_nm(mask, 2, 4), k
    ids = calib[:2]
    reference = _masked(dense, back)
    # fp32 differs only by summation order (logits up to ~20); in float64 the two agree to rounding
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(copy.deepcopy(model).double(), ids), _logits(reference.double(), ids),
                               atol=1e-10, rtol=0)


def test_stats_json_records_permutation(stories_calib, tmp_path):
    dense, calib = stories_calib
    model = copy.deepcopy(dense)
    options = {**PERM, "permutation_importance": "retained_degree_per_outneuron"}
    result = prune(model, calib, PruneConfig(method="ria", pattern="2:4", options=options))
    paths = save_result(result, tmp_path, save_weights=True, model=model)
    stats = json.loads(paths["stats"].read_text())
    rec = stats["channel_permutation"]["model.layers.0.mlp.down_proj"]
    assert stats["resolved_options"]["channel_permutation"] is True
    if rec["applied"]:
        assert sorted(rec["input_index"]) == list(range(dense.config.intermediate_size))
    weights = load_file(str(paths["weights"]))
    assert set(result.masks) <= set(weights)


@pytest.mark.parametrize("pattern,fname", [("2:4", "2of4"), ("unstructured", "unstructured")])
def test_default_off_is_reference(reference_dir, pattern, fname):
    """(d) the option off (default or explicit) keeps the reference masks bit for bit and the dense order."""
    from transformers import AutoModelForCausalLM
    ref = load_file(str(reference_dir / "masks" / f"ria__{fname}.safetensors"))
    calib = load_file(str(reference_dir / "calib.safetensors"))["input_ids"]
    for options in ({}, {"channel_permutation": False}):
        model = AutoModelForCausalLM.from_pretrained(reference_dir / "model", dtype=torch.float32)
        result = prune(model, calib, PruneConfig(method="ria", pattern=pattern, options=options))
        assert set(result.masks) == set(ref)
        assert all(torch.equal(result.masks[k], ref[k]) for k in ref)
        assert result.weights is None and "channel_permutation" not in result.stats


def test_unstructured_ignores_the_option(calib_ids):
    a = prune(tiny_model("llama"), calib_ids, PruneConfig(method="ria", options=PERM))
    b = prune(tiny_model("llama"), calib_ids, PruneConfig(method="ria"))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in b.masks)
    assert "channel_permutation" not in a.stats


@pytest.mark.parametrize("family", ["opt", "gpt2", "gpt_neox"])
def test_other_families_refuse_clearly(family, calib_ids):
    with pytest.raises(PruneError, match="channel_permutation is implemented for Llama, Mistral and Qwen2"):
        prune(tiny_model(family), calib_ids, PruneConfig(method="ria", pattern="2:4", options=PERM))


def test_bad_importance_is_an_error(calib_ids):
    with pytest.raises(PruneError, match="permutation_importance"):
        prune(tiny_model("llama"), calib_ids, PruneConfig(method="ria", pattern="2:4",
                                                           options={**PERM, "permutation_importance": "max"}))
