"""Engine and registry: bad input gets a clear PruneError; selection count rules; options; SparseGPT damping."""
from __future__ import annotations

import warnings

import pytest
import torch

from pruners import PruneConfig, PruneError, get_method, list_methods, prune
from pruners.method import Method
from pruners.methods.sparsegpt import _inverse_factor
from pruners.options import Option
from pruners.registry import REGISTRY, Registry
from pruners.selection import nm_mask, row_mask, threshold_mask

from .conftest import tiny_model


def test_registry_lists_methods_with_declarations():
    assert list_methods() == ["flap", "gblm", "magnitude", "ria", "shortgpt", "sparsegpt", "wanda"]
    for name in list_methods():
        m = get_method(name)
        names = [o.name for o in m.options]
        assert m.structured == (name in ("flap", "shortgpt")) == (m.prune_model is not None)
        assert m.structured or ("group" in names and "block_size" in names)
        for o in m.options:
            assert o.help and isinstance(o.default, o.type)
    assert get_method("flap").needs_calibration and get_method("shortgpt").needs_calibration
    assert get_method("sparsegpt").needs == ("hessian",)
    assert get_method("gblm").prepare is not None and get_method("gblm").needs_calibration
    assert get_method("magnitude").needs == () and not get_method("magnitude").needs_calibration


def test_registry_refuses_a_second_method_under_one_name():
    with pytest.raises(PruneError, match="already registered"):
        REGISTRY.register(get_method("wanda"))
    fresh = Registry()
    fresh.register(get_method("wanda"))
    assert fresh.names() == ["wanda"]


def test_option_values_are_checked_strictly():
    """One mechanism for pruner and NSA options: no silent truncation, no typo read as False."""
    block, flag = Option("block_size", int, 128, min=1), Option("shared_hessian", bool, True)
    assert block.validate(64) == 64 and block.validate(64.0) == 64 and block.validate("64") == 64
    assert flag.validate("false") is False and flag.validate(True) is True
    for opt, value, match in ((block, 2.5, "expected an integer"), (block, 0, "must be at least 1"),
                              (flag, "ture", "expected true or false"), (block, True, "expected an integer")):
        with pytest.raises(PruneError, match=match):
            opt.validate(value)


def test_unknown_method_lists_registered():
    with pytest.raises(PruneError, match="flap, gblm, magnitude, ria, shortgpt, sparsegpt, wanda"):
        get_method("obs")


def test_a_method_declares_one_driver():
    """Per-layer `prune` or a whole-model `prune_model` (structured), never both or neither."""
    with pytest.raises(TypeError, match="exactly one of prune"):
        Method("neither")
    with pytest.raises(TypeError, match="exactly one of prune"):
        Method("both", prune=get_method("wanda").prune, prune_model=get_method("flap").prune_model)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), r"sparsity: must be in \[0, 1\)"),
    (dict(sparsity=-0.1), r"sparsity: must be in \[0, 1\)"),
    (dict(sparsity=True), r"sparsity: expected a fraction"),
    (dict(method=""), r"method: expected a method name"),
    (dict(pattern="4:4"), "0 < N < M"),
    (dict(pattern="5:4"), "0 < N < M"),
    (dict(pattern="2-4"), "N:M"),
    (dict(pattern="2:5"), "not divisible by M=5"),
    (dict(options={"group": "column"}), "must be one of"),
    (dict(options={"nope": 1}), "options.nope: unknown option for method wanda"),
    (dict(options={"block_size": 0}), "options.block_size: must be at least 1, got 0"),
    (dict(options="row"), "options: expected a mapping"),
])
def test_bad_config(kwargs, match, calib_ids):
    with pytest.raises(PruneError, match=match):
        prune(tiny_model("llama"), calib_ids, PruneConfig(**({"method": "wanda"} | kwargs)))


def test_config_is_normalised_once():
    """Case, spaces and defaults are settled on construction; N:M fixes the sparsity (one computation, one config)."""
    a = PruneConfig("WANDA", 0.7, " 2 : 4 ")
    b = PruneConfig("wanda", 0.5, "2:4", {"group": "row"})
    assert a == b and a.sparsity == 0.5 and a.options == {"block_size": 128, "group": "row"}
    assert PruneConfig.from_dict(a.to_dict()) == a
    with pytest.raises(PruneError, match="sparsty: unknown key"):
        PruneConfig.from_dict({"method": "wanda", "sparsty": 0.5})
    err = pytest.raises(PruneError, PruneConfig, "wanda", 2.0).value
    assert err.field == "sparsity" and err.at("--sparsity").startswith("--sparsity: must be in [0, 1)")


@pytest.mark.parametrize("calib,match", [
    (torch.zeros(0, 16, dtype=torch.long), "empty"),
    (torch.zeros(4, 16, dtype=torch.int32), "int64"),
    (torch.full((4, 16), 128, dtype=torch.long), "vocabulary"),
    (torch.zeros(16, dtype=torch.long), "nsamples, seqlen"),
])
def test_bad_calibration(calib, match):
    with pytest.raises(PruneError, match=match):
        prune(tiny_model("llama"), calib, PruneConfig(method="wanda"))


def test_calibration_required():
    with pytest.raises(PruneError, match="needs calibration"):
        prune(tiny_model("llama"), None, PruneConfig(method="wanda"))
    prune(tiny_model("llama"), None, PruneConfig(method="magnitude"))  # magnitude needs none


def test_count_rules():
    score = torch.tensor([[4.0, 1.0, 3.0, 2.0, 1.0, 5.0]])
    assert row_mask(score, 0.5).sum() == 3
    # `<=` the k-th value: ties at the threshold all go
    assert threshold_mask(score, 0.5).tolist() == [[False, True, True, True, True, False]]
    assert nm_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), 2, 4).tolist() == [[False, True, False, True]]
    assert row_mask(score, 0.0).sum() == 0 and threshold_mask(score, 0.0).sum() == 0


@pytest.mark.parametrize("group", ["row", "layer", "block"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ria", "gblm"])
def test_every_method_takes_every_group(method, group, calib_ids):
    model = tiny_model("llama")
    result = prune(model, calib_ids, PruneConfig(method=method, sparsity=0.25, options={"group": group, "block_size": 16}))
    for name, mask in result.masks.items():
        frac = float(mask.float().mean())
        assert 0.24 <= frac <= 0.30, (name, frac)
        if group == "row" and method != "sparsegpt":
            assert torch.all(mask.sum(1) == int(mask.shape[1] * 0.25))


def test_sparsegpt_raises_dampening_instead_of_nan():
    x = torch.randn(4, 16)
    H = x.t() @ x  # rank 4 < 16: not positive definite without dampening
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Hinv = _inverse_factor(H, 0.0, "test")
    assert torch.isfinite(Hinv).all()
    assert any("dampening raised" in str(w.message) for w in caught)


def test_calib_device_and_determinism(calib_ids):
    a = prune(tiny_model("qwen2"), calib_ids, PruneConfig(method="gblm"), calib_device="cpu")
    b = prune(tiny_model("qwen2"), calib_ids, PruneConfig(method="gblm"))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.stats["versions"]["torch"] == torch.__version__
    assert set(a.stats["module_sparsity"]) == set(a.masks)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77, 0.99])
def test_row_mask_equals_stable_sort_even_with_ties(sparsity):
    g = torch.Generator().manual_seed(0)
    for score in (torch.randint(0, 4, (17, 24), generator=g).float(), torch.randn(30, 64, generator=g)):
        k = int(score.shape[1] * sparsity)
        expected = torch.zeros_like(score, dtype=torch.bool)
        expected.scatter_(1, torch.sort(score, dim=-1, stable=True)[1][:, :k], True)
        assert torch.equal(row_mask(score, sparsity), expected)
