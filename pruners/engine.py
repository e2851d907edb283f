"""Layer-wise sequential calibration: capture layer-0 inputs, then per decoder layer collect statistics,
prune, and recompute the pruned layer's outputs as the next layer's inputs (`pruners.layerwise`).

Before the layer pass, the config's sparsity profile (`pruners.profiles`) decides each layer's sparsity (OWL
makes its own pass over the dense model for that). A structured method (one that declares a whole-model driver,
`Method.prune_model`) replaces the layer pass: the engine runs its driver and applies the result.
"""
from __future__ import annotations

import platform
import time
from typing import Callable

import torch
import transformers
from torch import nn

from pruners.apply import apply_result
from pruners.config import ProgressEvent, PruneConfig
from pruners.errors import PruneError
from pruners.families import decoder_layers, get_family, prunable_modules
from pruners.layerwise import LayerInputs, collect_inputs, validate_calibration, weight_view
from pruners.method import LayerContext, Method, ModelContext, ModuleResult, PruneResult, Target
from pruners.permutation import apply_layer_permutations
from pruners.profiles import get_profile
from pruners.registry import get_method
from pruners.stats import InputStats


def prune(model: nn.Module, calib_ids: torch.Tensor | None, config: PruneConfig,
          progress: Callable[[ProgressEvent], None] | None = None, device: str | None = None,
          calib_device: str | None = None) -> PruneResult:
    """Prune `model` in place; masks keyed by parameter name (1 = pruned). See ARCHITECTURE.md.

    `device`: where layers run (default: where the model is); `calib_device`: where the calibration
    activations are kept between layers (default: `device`; "cpu" saves GPU memory on large models).
    """
    t_start = time.perf_counter()
    method = get_method(config.method)
    family = get_family(model)
    layers = decoder_layers(model)
    _check_pattern(model, layers, config, family.conv1d)
    device = torch.device(device) if device else next(model.parameters()).device
    calib_device = torch.device(calib_device) if calib_device else device
    if config.needs_calibration:
        if calib_ids is None:
            why = "" if method.needs_calibration else f" (sparsity profile {config.sparsity_profile} reads activations)"
            raise PruneError(f"method {method.name!r} needs calibration tokens{why}")
        calib_ids = validate_calibration(calib_ids, model)
    model.to(device)
    was_training = model.training
    model.eval()

    def report(frac, msg):
        if progress is not None:
            progress(ProgressEvent(fraction=frac, message=msg, stage="prune"))

    try:
        if method.prune_model is not None:
            result = method.prune_model(model, calib_ids, ModelContext(config.sparsity, config.options, device,
                                                                       calib_device, report))
            apply_result(model, result.masks, result.weights)
            extra = dict(result.stats)
            masks, weights = result.masks, result.weights
            layer_times = extra.pop("layer_times_s", [])
        else:
            masks, weights, layer_times, extra = _prune_layers(model, calib_ids, config, method, device,
                                                               calib_device, report)
    finally:
        model.train(was_training)
    module_sparsity = {k: float(m.float().mean()) for k, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    stats_out = {
        "config": config.to_dict(), "resolved_options": dict(config.options), "method_needs": list(method.needs),
        "family": family.name, "module_sparsity": module_sparsity,
        "overall_sparsity": sum(module_sparsity[k] * masks[k].numel() for k in masks) / max(total, 1),
        "layer_times_s": layer_times, "total_time_s": time.perf_counter() - t_start,
        "calibration_shape": list(calib_ids.shape) if calib_ids is not None else None,
        "versions": _versions(),
    }
    stats_out.update(extra)
    return PruneResult(masks=masks, stats=stats_out, weights=weights or None)


def _prune_layers(model: nn.Module, calib_ids, config: PruneConfig, method: Method, device, calib_device,
                  report) -> tuple[dict, dict, list, dict]:
    """The layer-by-layer pass of an unstructured method at the profile's per-layer sparsities:
    (masks, weights, layer times, extra stats)."""
    family = get_family(model)
    layers = decoder_layers(model)
    plan = get_profile(config.sparsity_profile).plan(model, calib_ids, config.sparsity, config.profile_options,
                                                     device, calib_device, report)
    aux = {}
    if method.prepare is not None:
        report(0.0, f"{method.name}: preparing on the dense model")
        aux = method.prepare(model, calib_ids, config.options, device)

    masks, weights, layer_times, permutations = {}, {}, [], {}
    inputs = LayerInputs(model, calib_ids, device, calib_device) if method.needs else None
    n_layers = len(layers)
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        ctx = LayerContext(sparsity=plan.sparsity[i], nm=config.nm, options=config.options, model=model)
        modules = prunable_modules(model, i)
        stats = collect_inputs(inputs, layer, modules, _stats_factory(method.needs)) if method.needs else {}
        results = _prune_layer(method, modules, stats, aux, family.conv1d, ctx)
        perms = {}
        for name, mod in modules.items():
            result = results[name]
            pname = name + ".weight"
            _write_back(mod, result, family.conv1d, weights, pname)
            masks[pname] = (result.mask.t() if family.conv1d else result.mask).to(torch.uint8).cpu().contiguous()
            if result.permutation is not None:
                perms[name] = result.permutation
        if perms:  # before the re-run: the permuted layer computes the same function
            permutations.update(apply_layer_permutations(model, modules, perms, masks, weights))
        del stats
        if inputs is not None:
            inputs.run(layer)
            inputs.advance()
        layer_times.append(time.perf_counter() - t0)
        report((i + 1) / n_layers, f"layer {i + 1}/{n_layers} pruned")
    if permutations:  # permuted weights differ from the dense ones: ship every pruned weight (see io.save_result)
        params = dict(model.named_parameters())
        for k in masks:
            weights.setdefault(k, params[k].detach().cpu().clone())
    extra = {"sparsity_profile": config.sparsity_profile, "layer_sparsity": list(plan.sparsity), **plan.stats}
    if permutations:
        extra["channel_permutation"] = permutations
    return masks, weights, layer_times, extra


def _stats_factory(needs: tuple[str, ...]):
    def make(x: torch.Tensor) -> InputStats:
        return InputStats(x.shape[-1], x.device, hessian="hessian" in needs, activations="activations" in needs)
    return make


def _check_pattern(model: nn.Module, layers, config: PruneConfig, conv1d: bool) -> None:
    nm = config.nm
    if nm is None:
        return
    for i in range(len(layers)):
        for name, mod in prunable_modules(model, i).items():
            d_in = mod.weight.shape[0] if conv1d else mod.weight.shape[1]
            if d_in % nm[1]:
                raise PruneError(f"{name} has {d_in} inputs, not divisible by M={nm[1]}", "pattern")


def _prune_layer(method: Method, modules: dict[str, nn.Module], stats: dict, aux: dict, conv1d: bool,
                 ctx: LayerContext) -> dict[str, ModuleResult]:
    """{module name: result}: one prune call per Linear, or per group of Linears sharing an input statistic when
    the method is joint (SparseGPT's stacked sweep over q/k/v and gate/up)."""
    groups: dict[int, list[str]] = {}
    joint = method.joint(ctx.options)
    for name in modules:
        key = id(stats[name]) if joint and stats.get(name) is not None else id(name)
        groups.setdefault(key, []).append(name)
    out: dict[str, ModuleResult] = {}
    for names in groups.values():
        targets = [Target(n, weight_view(modules[n], conv1d), _aux_view(aux, n, conv1d)) for n in names]
        results = method.prune(targets, stats.get(names[0]), ctx)
        if len(results) != len(targets):
            raise PruneError(f"method {method.name} returned {len(results)} results for {len(targets)} modules")
        out.update(zip(names, results))
    return out


def _write_back(mod: nn.Module, result: ModuleResult, conv1d: bool, weights: dict, pname: str) -> None:
    """Zero the pruned entries in the model (or copy the method's new kept weights in, pruned entries zeroed)."""
    with torch.no_grad():
        if result.weight is not None:
            W_new = result.weight
            W_new[result.mask] = 0
            new = W_new.t() if conv1d else W_new
            mod.weight.data.copy_(new.to(mod.weight.dtype))
            weights[pname] = mod.weight.data.detach().to("cpu").clone()
        else:
            m = result.mask.t() if conv1d else result.mask
            mod.weight.data[m.to(mod.weight.device)] = 0


def _aux_view(aux: dict, name: str, conv1d: bool) -> torch.Tensor | None:
    g = aux.get(name + ".weight")
    if g is None:
        return None
    return (g.t() if conv1d else g).float()


def _versions() -> dict:
    """Library versions and torch's CPU thread count: reductions (activation norms, Hessians) sum in a
    thread-dependent order, which moves near-ties in the scores (see docs/pruning.md, Reproducibility)."""
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads()}
