"""OWL sparsity profile: parity with the authors' code (tests/pruners/reference/owl, see its README), the config's
checks, and every unstructured method under a per-layer profile."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pruners import PruneConfig, PruneError, list_profiles, prune
from pruners.profiles import owl_sparsities

from .conftest import REFERENCE, tiny_model

CASES = {"stories260K": ("models/stories260K", "stories260K-c4-calib.safetensors"),
         "tiny-llama": ("reference/tiny-llama/model", None)}


def _case(shared_dir, reference_dir, case):
    model_dir, calib = CASES[case]
    calib_path = REFERENCE / calib if calib else reference_dir / "calib.safetensors"
    settings = json.loads((REFERENCE / "owl" / case / "owl.json").read_text())["settings"]
    return shared_dir / model_dir, load_file(str(calib_path))["input_ids"], settings


def _owl(setting) -> PruneConfig:
    return PruneConfig("wanda", setting["target_sparsity"], sparsity_profile="owl",
                       profile_options={"owl_m": setting["Hyper_m"], "owl_lambda": setting["Lamda"]})


@pytest.mark.parametrize("case", list(CASES))
def test_owl_matches_reference_ratios_sparsities_and_masks(shared_dir, reference_dir, case):
    """Outlier ratios and layer sparsities exactly (float64 bits), wanda+OWL masks bit for bit."""
    model_dir, calib, settings = _case(shared_dir, reference_dir, case)
    assert len(settings) == 4
    for setting in settings:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        result = prune(model, calib, _owl(setting))
        assert result.stats["outlier_ratio_percent"] == setting["outlier_ratio_percent"]
        assert [x.hex() for x in result.stats["layer_sparsity"]] == setting["layer_sparsity_float64_hex"]
        assert result.stats["config"]["sparsity_profile"] == "owl"
        if setting.get("mask_file"):
            ref = load_file(str(REFERENCE / "owl" / case / setting["mask_file"]))
            assert set(ref) == set(result.masks)
            assert all(torch.equal(ref[k], result.masks[k]) for k in ref)


def test_owl_lambda_zero_is_uniform(reference_dir):
    """λ = 0 spreads nothing: the masks are the shared uniform wanda reference."""
    model = AutoModelForCausalLM.from_pretrained(reference_dir / "model", dtype=torch.float32)
    calib = load_file(str(reference_dir / "calib.safetensors"))["input_ids"]
    result = prune(model, calib, PruneConfig("wanda", sparsity_profile="owl", profile_options={"owl_lambda": 0}))
    ref = load_file(str(reference_dir / "masks" / "wanda__unstructured.safetensors"))
    assert result.stats["layer_sparsity"] == [0.5, 0.5]
    assert all(torch.equal(ref[k], result.masks[k]) for k in ref)


def test_owl_sparsities_formula():
    """Spread 2λ, mean S, more outliers → lower sparsity; equal ratios → uniform (the reference divides by 0)."""
    sp = owl_sparsities([3.0, 1.0, 2.0], 0.6, 0.1)
    assert sp[0] < sp[2] < sp[1]
    assert sp[1] - sp[0] == pytest.approx(0.2) and sum(sp) / 3 == pytest.approx(0.6)
    assert owl_sparsities([2.0, 2.0], 0.5, 0.08) == [0.5, 0.5]
    assert owl_sparsities([0.0, 10.0], 0.05, 0.2)[1] == 0.01  # ≤ 0 → 0.01, as the reference


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ria", "gblm"])
def test_every_unstructured_method_takes_owl(method, calib_ids):
    model = tiny_model("qwen2")
    result = prune(model, calib_ids, PruneConfig(method, 0.5, sparsity_profile="owl"))
    layer_sparsity = result.stats["layer_sparsity"]
    assert len(layer_sparsity) == 2 and layer_sparsity[0] != layer_sparsity[1]
    assert sum(layer_sparsity) / 2 == pytest.approx(0.5)
    for i, target in enumerate(layer_sparsity):
        got = [float(m.float().mean()) for k, m in result.masks.items() if f"layers.{i}." in k]
        assert all(abs(g - target) < 0.05 for g in got), (i, target, got)
    assert len(result.stats["outlier_ratio_percent"]) == 2


def test_magnitude_with_owl_needs_calibration():
    config = PruneConfig("magnitude", sparsity_profile="owl")
    assert config.needs_calibration and not PruneConfig("magnitude").needs_calibration
    with pytest.raises(PruneError, match="needs calibration tokens .sparsity profile owl"):
        prune(tiny_model("llama"), None, config)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pattern="2:4"), "sparsity_profile: OWL layer-wise sparsity is not defined for N:M patterns"),
    (dict(profile_options={"owl_m": 0}), "profile_options.owl_m: must be above 0, got 0"),
    (dict(profile_options={"owl_m": "many"}), "profile_options.owl_m: expected a number"),
    (dict(profile_options={"owl_lambda": 0.5}), r"profile_options.owl_lambda: must be at least 0 and below 0.5"),
    (dict(profile_options={"owl_lambda": -0.01}), r"profile_options.owl_lambda: must be at least 0"),
    (dict(profile_options={"lam": 0.1}), "profile_options.lam: unknown option for sparsity profile owl"),
    (dict(sparsity_profile="outliers"), "sparsity_profile: unknown sparsity profile 'outliers': the profiles are "
                                        "uniform, owl"),
])
def test_bad_owl_config(kwargs, match):
    with pytest.raises(PruneError, match=match):
        PruneConfig(**({"method": "wanda", "sparsity_profile": "owl"} | kwargs))


def test_uniform_takes_no_profile_options():
    with pytest.raises(PruneError, match="profile_options.owl_m: unknown option for sparsity profile uniform"):
        PruneConfig("wanda", profile_options={"owl_m": 5})


def test_owl_refuses_a_layer_pushed_to_full_sparsity(calib_ids):
    with pytest.raises(PruneError, match="OWL would prune decoder layer .* to sparsity .* lower the sparsity"):
        prune(tiny_model("llama"), calib_ids, PruneConfig("wanda", 0.95, sparsity_profile="owl",
                                                          profile_options={"owl_lambda": 0.2}))


def test_profile_keys_in_specs():
    """Uniform configs serialise as before (run ids stay); a spec without the keys is uniform; OWL round-trips."""
    assert list_profiles() == ["uniform", "owl"]
    assert "sparsity_profile" not in PruneConfig("wanda").to_dict()
    assert PruneConfig.from_dict({"method": "wanda"}).sparsity_profile == "uniform"
    owl = PruneConfig("wanda", sparsity_profile=" OWL ", profile_options={"owl_m": 3})
    data = owl.to_dict()
    assert data["sparsity_profile"] == "owl" and data["profile_options"] == {"owl_lambda": 0.08, "owl_m": 3.0}
    assert PruneConfig.from_dict(data) == owl
