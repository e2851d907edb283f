"""Layer-wise sequential calibration: capture layer-0 inputs, then per decoder layer collect statistics,
prune, and recompute the pruned layer's outputs as the next layer's inputs.

Layer-0 inputs *and every keyword argument* the model passes its decoder layers (attention mask, position ids,
rotary position_embeddings, cache flags) are captured generically with a forward pre-hook (with kwargs) that
stops the forward; nothing is sized by max_position_embeddings.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from pruners.config import ProgressEvent, PruneConfig, PruneResult, parse_pattern, validate_sparsity
from pruners.errors import PruneError
from pruners.families import decoder_layers, get_family, prunable_modules
from pruners.registry import get_method
from pruners.stats import InputStats


class _Stop(Exception):
    pass


@dataclass
class PruneContext:
    """What a method's prune function needs besides the weight and its statistics."""
    name: str
    sparsity: float
    nm: tuple[int, int] | None
    options: dict
    gradient: torch.Tensor | None = None  # [out, in] (GBLM)
    model: nn.Module | None = None  # the model being pruned (RIA channel_permutation reads its structure)
    permutation: object = None  # set by the method: a ColumnPermutation to apply at layer end, or a reason str


def validate_calibration(calib_ids, model) -> torch.Tensor:
    if not isinstance(calib_ids, torch.Tensor):
        raise PruneError("calibration must be a LongTensor [nsamples, seqlen] of token ids")
    if calib_ids.dtype != torch.int64:
        raise PruneError(f"calibration token ids have dtype {calib_ids.dtype}: they must be int64 token ids")
    if calib_ids.dim() != 2:
        raise PruneError(f"calibration tokens have shape {tuple(calib_ids.shape)}: need [nsamples, seqlen]")
    if calib_ids.shape[0] == 0 or calib_ids.shape[1] == 0:
        raise PruneError(f"calibration tokens are empty (shape {tuple(calib_ids.shape)}): need nsamples ≥ 1 and seqlen ≥ 1")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and (int(calib_ids.min()) < 0 or int(calib_ids.max()) >= vocab):
        raise PruneError(f"calibration token ids span [{int(calib_ids.min())}, {int(calib_ids.max())}] "
                         f"but the model's vocabulary has {vocab} entries: tokenize with the model's tokenizer")
    return calib_ids


def _layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_layer0_inputs(model: nn.Module, calib_ids: torch.Tensor, device, calib_device):
    """Run the model on each calibration row until layer 0; return (inputs [n, seq, hidden], layer kwargs)."""
    layers = decoder_layers(model)
    captured: dict = {}

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured["hidden"] = hidden
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    inps, kwargs = None, None
    try:
        for i in range(calib_ids.shape[0]):
            try:
                model(input_ids=calib_ids[i:i + 1].to(device), use_cache=False)
            except _Stop:
                pass
            h = captured["hidden"]
            if inps is None:
                inps = torch.zeros((calib_ids.shape[0],) + tuple(h.shape[1:]), dtype=h.dtype, device=calib_device)
                kwargs = captured["kwargs"]
            inps[i] = h[0].to(calib_device)
    finally:
        handle.remove()
    return inps, kwargs


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    return obj


def _run_layer(layer, inps, outs, kwargs, device, hooks_active=None):
    for j in range(inps.shape[0]):
        if hooks_active is not None:
            hooks_active(j)
        outs[j] = _layer_output(layer(inps[j:j + 1].to(device), **kwargs))[0].to(outs.device)


def _weight_view(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """Weight as [out, in] float32 (GPT-2 Conv1D stores [in, out])."""
    w = module.weight.data
    return (w.t() if conv1d else w).float().clone()


def prune(model: nn.Module, calib_ids: torch.Tensor | None, config: PruneConfig,
          progress: Callable[[ProgressEvent], None] | None = None,
          gradients: dict | None = None) -> PruneResult:
    """Prune `model` in place; masks keyed by parameter name (1 = pruned). See ARCHITECTURE.md."""
    t_start = time.perf_counter()
    method = get_method(config.method)
    sparsity = validate_sparsity(config.sparsity)
    nm = parse_pattern(config.pattern)
    options = method.resolve_options(config.options)
    family = get_family(model)
    layers = decoder_layers(model)
    for i in range(len(layers)):
        for name, mod in prunable_modules(model, i).items():
            d_in = mod.weight.shape[0] if family.conv1d else mod.weight.shape[1]
            if nm and d_in % nm[1]:
                raise PruneError(f"pattern {config.pattern}: {name} has {d_in} inputs, not divisible by M={nm[1]}")
    needs_calib = bool(set(method.needs) & {"activations", "hessian", "gradients"})
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    calib_device = torch.device(config.calib_device) if config.calib_device else device
    torch.manual_seed(config.seed)
    if needs_calib:
        if calib_ids is None:
            raise PruneError(f"method {method.name!r} needs calibration tokens")
        calib_ids = validate_calibration(calib_ids, model)
    model.to(device)
    was_training = model.training
    model.eval()

    def report(frac, msg):
        if progress is not None:
            progress(ProgressEvent(fraction=frac, message=msg))

    if "gradients" in method.needs and gradients is None:
        from pruners.gradients import compute_gradients
        report(0.0, "gradient pass")
        gradients = compute_gradients(model, calib_ids, scale=options.get("scale", 100.0), device=device)

    masks, weights, layer_times, module_sparsity, permutations = {}, {}, [], {}, {}
    inps = kwargs = None
    if needs_calib:
        inps, kwargs = capture_layer0_inputs(model, calib_ids, device, calib_device)
        kwargs = {k: _to(v, device) for k, v in kwargs.items()}
        outs = torch.zeros_like(inps)
    n_layers = len(layers)
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        modules = prunable_modules(model, i)
        stats = (_collect_stats(layer, modules, inps, outs, kwargs, device, method.needs,
                               share=options.get("shared_hessian", True)) if needs_calib else {})
        perms = {}
        grouped = _prune_groups(method, modules, stats, family.conv1d, lambda n: PruneContext(
            name=n, sparsity=sparsity, nm=nm, options=options, model=model,
            gradient=None if gradients is None else _grad_view(gradients, n, family.conv1d)))
        for name, mod in modules.items():
            ctx = PruneContext(name=name, sparsity=sparsity, nm=nm, options=options, model=model,
                               gradient=None if gradients is None else _grad_view(gradients, name, family.conv1d))
            mask, W_new = grouped.pop(name) if name in grouped else \
                method.prune(_weight_view(mod, family.conv1d), stats.get(name), ctx)
            pname = name + ".weight"
            with torch.no_grad():
                if W_new is not None:
                    W_new[mask] = 0
                    new = W_new.t() if family.conv1d else W_new
                    mod.weight.data.copy_(new.to(mod.weight.dtype))
                    weights[pname] = mod.weight.data.detach().to("cpu").clone()
                else:
                    m = mask.t() if family.conv1d else mask
                    mod.weight.data[m.to(mod.weight.device)] = 0
            masks[pname] = (mask.t() if family.conv1d else mask).to(torch.uint8).cpu().contiguous()
            module_sparsity[pname] = float(mask.float().mean())
            if ctx.permutation is not None:
                perms[name] = ctx.permutation
        if perms:  # before the re-run: the permuted layer computes the same function
            from pruners.permutation import apply_layer_permutations
            permutations.update(apply_layer_permutations(model, modules, perms, masks, weights))
        del stats
        if needs_calib:
            with torch.no_grad():
                _run_layer(layer, inps, outs, kwargs, device)
            inps, outs = outs, inps
        layer_times.append(time.perf_counter() - t0)
        report((i + 1) / n_layers, f"layer {i + 1}/{n_layers} pruned")
    model.train(was_training)
    if permutations:  # permuted weights differ from the dense ones: ship every pruned weight (see io.save_result)
        params = dict(model.named_parameters())
        for k in masks:
            weights.setdefault(k, params[k].detach().cpu().clone())
    total = sum(m.numel() for m in masks.values())
    stats_out = {
        "config": asdict(config), "resolved_options": options, "method_needs": list(method.needs),
        "family": family.name, "module_sparsity": module_sparsity,
        "overall_sparsity": sum(module_sparsity[k] * masks[k].numel() for k in masks) / max(total, 1),
        "layer_times_s": layer_times, "total_time_s": time.perf_counter() - t_start,
        "calibration_shape": list(calib_ids.shape) if calib_ids is not None else None,
        "versions": _versions(),
    }
    if permutations:
        stats_out["channel_permutation"] = permutations
    return PruneResult(masks=masks, stats=stats_out, weights=weights or None)


def _grad_view(gradients: dict, name: str, conv1d: bool) -> torch.Tensor:
    g = gradients[name + ".weight"]
    return (g.t() if conv1d else g).float()


def _prune_groups(method, modules, stats, conv1d: bool, make_ctx) -> dict:
    """{name: (mask, W_new)} for Linears sharing one input statistic (q/k/v, gate/up), when the method's
    prune function has a `group` attribute (SparseGPT: one OBS sweep over their stacked rows); {} otherwise."""
    group_fn = getattr(method.prune, "group", None)
    by_input: dict[int, list[str]] = {}
    for name in modules:
        if group_fn is not None and stats.get(name) is not None:
            by_input.setdefault(id(stats[name]), []).append(name)
    out = {}
    for names in by_input.values():
        if len(names) > 1:
            results = group_fn([_weight_view(modules[n], conv1d) for n in names], stats[names[0]],
                               [make_ctx(n) for n in names])
            out.update(zip(names, results))
    return out


def _collect_stats(layer, modules, inps, outs, kwargs, device, needs, share: bool = True) -> dict:
    """One forward of the dense layer per sample; inputs shared by several Linears are accumulated once."""
    seen: dict[str, torch.Tensor] = {}
    handles = [mod.register_forward_hook(
        lambda m, inp, out, name=name: seen.__setitem__(name, inp[0].detach())) for name, mod in modules.items()]
    per_input: dict[tuple, InputStats] = {}
    owner: dict[str, tuple] = {}
    try:
        with torch.no_grad():
            for j in range(inps.shape[0]):
                seen.clear()
                outs[j] = _layer_output(layer(inps[j:j + 1].to(device), **kwargs))[0].to(outs.device)
                done = set()
                for name, x in seen.items():
                    key = owner.get(name) or ((x.data_ptr(), tuple(x.shape)) if share else (name,))
                    owner[name] = key
                    if key not in per_input:
                        per_input[key] = InputStats(x.shape[-1], x.device, hessian="hessian" in needs,
                                                    activations="activations" in needs)
                    if key not in done:
                        per_input[key].add_batch(x)
                        done.add(key)
    finally:
        for h in handles:
            h.remove()
    return {name: per_input[owner[name]] for name in modules}


def _versions() -> dict:
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
