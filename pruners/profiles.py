"""Sparsity profiles: how the requested sparsity is spread over the decoder layers, for every unstructured method.

A profile is declared once (`Profile`: name, options, `plan`), like a method; `PruneConfig` validates its options
and the engine asks it for one sparsity per decoder layer before pruning, then prunes layer `i` at
`LayerContext.sparsity = plan.sparsity[i]`.

* `uniform` — every layer at the requested sparsity (what every method did before profiles existed).
* `owl` — Outlier Weighed Layerwise sparsity (Yin et al. 2024, luuyin/OWL `prune_wanda_outlier`), computed as the
  authors' code computes it:
  1. one pass over the *dense* model with the calibration rows (each layer sees the dense outputs of the layer
     before it; nothing is pruned in this pass): per decoder layer, Wanda's score |W_ij|·‖x_j‖ of every prunable
     weight, the seven score matrices (q, k, v, o, gate, up, down) flattened and concatenated, one float32 mean,
     and the layer's outlier ratio = 100 · #{score > M · mean} / #scores (strict `>`, in percent);
  2. in float64 (NumPy, the reference's order of operations): ratios min–max scaled to [0, 2λ], centred on their
     mean, shifted to mean density 1 − S; layer sparsity = 1 − density (≤ 0 → 0.01, as the reference). More
     outliers → lower sparsity; the unweighted mean of the layer sparsities is S and their spread is 2λ.
  Then the usual progressive pass prunes each layer with its own sparsity (any unstructured method: Wanda,
  SparseGPT, magnitude — magnitude then reads calibration data for the ratios, as OWL's `prune_mag_outlier`).
  Deviations, only where the reference fails: equal ratios in every layer (the reference divides by zero and
  crashes) give the uniform profile; a layer pushed to sparsity ≥ 1 is refused (the reference would prune it all).
  OWL is not defined here for N:M patterns (the authors' N:M variant changes N per layer): refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pruners.errors import PruneError
from pruners.families import decoder_layers, get_family, prunable_modules
from pruners.layerwise import dense_layer_pass, weight_view
from pruners.methods.wanda import wanda_score
from pruners.options import Option
from pruners.stats import InputStats

UNIFORM = "uniform"


@dataclass
class LayerPlan:
    """A profile's answer: one sparsity per decoder layer, and what to record in stats.json."""

    sparsity: list[float]
    stats: dict


# (model, calib_ids or None, sparsity, options, device, calib_device, report) -> LayerPlan
PlanFn = Callable[..., LayerPlan]


@dataclass(frozen=True)
class Profile:
    name: str
    plan: PlanFn
    options: tuple[Option, ...] = ()
    needs_calibration: bool = False
    nm: bool = True  # defined for N:M patterns
    help: str = ""


def _uniform(model, calib_ids, sparsity, options, device, calib_device, report) -> LayerPlan:
    return LayerPlan([sparsity] * len(decoder_layers(model)), {})


def outlier_ratios(model: nn.Module, calib_ids: torch.Tensor, m: float, device, calib_device,
                   report: Callable[[float, str], None] | None = None) -> list[float]:
    """OWL's layer outlier ratio (percent) of every decoder layer of the dense model (see the module doc)."""
    conv1d = get_family(model).conv1d
    ratios = []

    def stats_for(x):
        return InputStats(x.shape[-1], x.device, hessian=False, activations=True)

    for i, stats in dense_layer_pass(model, calib_ids, device, calib_device,
                                     lambda i: prunable_modules(model, i), stats_for):
        modules = prunable_modules(model, i)
        scores = torch.cat([wanda_score(weight_view(mod, conv1d), stats[name]).flatten().cpu()
                            for name, mod in modules.items()])
        threshold = torch.mean(scores) * m
        ratios.append(int((scores > threshold).sum()) / scores.numel() * 100)
        if report is not None:
            report(0.0, f"owl: outlier ratio of layer {i + 1}: {ratios[-1]:.3f}%")
    return ratios


def owl_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """Layer sparsities from outlier ratios, in float64 exactly as `prune_wanda_outlier` computes them."""
    d = np.array(ratios, dtype=np.float64)
    spread = d.max() - d.min()
    if spread == 0:  # the reference divides by zero here; equal ratios carry no preference
        return [float(sparsity)] * len(ratios)
    d = (d - d.min()) * (1 / spread * lam * 2)
    d = d - np.mean(d) + (1 - sparsity)
    return [float(1 - x) if 1 - x > 0 else 0.01 for x in d]


def _owl(model, calib_ids, sparsity, options, device, calib_device, report) -> LayerPlan:
    ratios = outlier_ratios(model, calib_ids, options["owl_m"], device, calib_device, report)
    layer_sparsity = owl_sparsities(ratios, sparsity, options["owl_lambda"])
    too_high = [(i, s) for i, s in enumerate(layer_sparsity) if s >= 1]
    if too_high:
        i, s = too_high[0]
        raise PruneError(f"OWL would prune decoder layer {i} to sparsity {s:.4f} (≥ 1) at sparsity {sparsity:g} "
                         f"with owl_lambda {options['owl_lambda']:g}: lower the sparsity or owl_lambda",
                         "profile_options.owl_lambda")
    return LayerPlan(layer_sparsity, {"outlier_ratio_percent": ratios,
                                      "equal_ratios_gave_uniform": len(set(ratios)) == 1})


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile(UNIFORM, _uniform, help="every decoder layer at the requested sparsity"),
    Profile("owl", _owl, (
        Option("owl_m", float, 5.0, min=0.0, exclusive_min=True,
               help="OWL's M: a weight is an outlier when its Wanda score |W|·‖x‖ exceeds M × the mean score of "
                    "its decoder layer (paper default 5)"),
        Option("owl_lambda", float, 0.08, min=0.0, max=0.5, exclusive_max=True,
               help="OWL's λ: layer sparsities spread over [S − λ, S + λ] around the requested S, fewer pruned "
                    "where there are more outliers (paper default 0.08; 0 = uniform)"),
    ), needs_calibration=True, nm=False,
        help="outlier-weighed layer-wise sparsity (Yin et al. 2024): layers with more Wanda-score outliers "
             "are pruned less; unstructured patterns only"),
)}


def get_profile(name) -> Profile:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in PROFILES:
        raise PruneError(f"unknown sparsity profile {name!r}: the profiles are {', '.join(list_profiles())}",
                         "sparsity_profile")
    return PROFILES[key]


def list_profiles() -> list[str]:
    return list(PROFILES)
