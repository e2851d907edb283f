"""Layer-wise sequential calibration: capture layer-0 inputs, then per decoder layer collect statistics,
prune, and recompute the pruned layer's outputs as the next layer's inputs.

Layer-0 inputs *and every keyword argument* the model passes its decoder layers (attention mask, position ids,
rotary position_embeddings, cache flags) are captured generically with a forward pre-hook (with kwargs) that
stops the forward; nothing is sized by max_position_embeddings.
"""
from __future__ import annotations

import platform
import time
from typing import Callable

import torch
import transformers
from torch import nn

from pruners.config import ProgressEvent, PruneConfig, PruneResult
from pruners.errors import PruneError
from pruners.families import decoder_layers, get_family, prunable_modules
from pruners.method import LayerContext, Method, ModuleResult, Target
from pruners.permutation import apply_layer_permutations
from pruners.registry import get_method
from pruners.stats import InputStats


class _Stop(Exception):
    pass


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
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and calib_ids.shape[1] > context:
        raise PruneError(f"calibration rows have {calib_ids.shape[1]} tokens but the model reads at most {context}: "
                         f"use seqlen <= {context}", "seqlen")
    return calib_ids


def check_activation_memory(model: nn.Module, calib_ids: torch.Tensor, device: torch.device) -> None:
    """Refuse before allocating when the layer inputs and outputs of every calibration row (two buffers of
    nsamples x seqlen x hidden) cannot fit in the memory free on `device` (a request of 10^8 rows used to be
    killed by the kernel after growing to 17 GB)."""
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
    if not hidden:
        return
    dtype = next(model.parameters()).dtype
    need = 2 * calib_ids.shape[0] * calib_ids.shape[1] * int(hidden) * torch.finfo(dtype).bits // 8
    free = _free_bytes(device)
    if free is not None and need > 0.8 * free:
        raise PruneError(f"the calibration activations need {need / 2**30:.1f} GiB ({calib_ids.shape[0]} rows x "
                         f"{calib_ids.shape[1]} tokens x {hidden} x 2 buffers) but {free / 2**30:.1f} GiB are free "
                         f"on {device}: lower nsamples or seqlen", "nsamples")


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


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
    if method.needs_calibration:
        if calib_ids is None:
            raise PruneError(f"method {method.name!r} needs calibration tokens")
        calib_ids = validate_calibration(calib_ids, model)
    model.to(device)
    was_training = model.training
    model.eval()

    def report(frac, msg):
        if progress is not None:
            progress(ProgressEvent(fraction=frac, message=msg, stage="prune"))

    aux = {}
    if method.prepare is not None:
        report(0.0, f"{method.name}: preparing on the dense model")
        aux = method.prepare(model, calib_ids, config.options, device)

    masks, weights, layer_times, module_sparsity, permutations = {}, {}, [], {}, {}
    inps = kwargs = outs = None
    if method.needs:
        check_activation_memory(model, calib_ids, calib_device)
        inps, kwargs = capture_layer0_inputs(model, calib_ids, device, calib_device)
        kwargs = {k: _to(v, device) for k, v in kwargs.items()}
        outs = torch.zeros_like(inps)
    ctx = LayerContext(sparsity=config.sparsity, nm=config.nm, options=config.options, model=model)
    n_layers = len(layers)
    for i, layer in enumerate(layers):
        t0 = time.perf_counter()
        modules = prunable_modules(model, i)
        stats = _collect_stats(layer, modules, inps, outs, kwargs, device, method.needs) if method.needs else {}
        results = _prune_layer(method, modules, stats, aux, family.conv1d, ctx)
        perms = {}
        for name, mod in modules.items():
            result = results[name]
            pname = name + ".weight"
            _write_back(mod, result, family.conv1d, weights, pname)
            masks[pname] = (result.mask.t() if family.conv1d else result.mask).to(torch.uint8).cpu().contiguous()
            module_sparsity[pname] = float(result.mask.float().mean())
            if result.permutation is not None:
                perms[name] = result.permutation
        if perms:  # before the re-run: the permuted layer computes the same function
            permutations.update(apply_layer_permutations(model, modules, perms, masks, weights))
        del stats
        if method.needs:
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
        "config": config.to_dict(), "resolved_options": dict(config.options), "method_needs": list(method.needs),
        "family": family.name, "module_sparsity": module_sparsity,
        "overall_sparsity": sum(module_sparsity[k] * masks[k].numel() for k in masks) / max(total, 1),
        "layer_times_s": layer_times, "total_time_s": time.perf_counter() - t_start,
        "calibration_shape": list(calib_ids.shape) if calib_ids is not None else None,
        "versions": _versions(),
    }
    if permutations:
        stats_out["channel_permutation"] = permutations
    return PruneResult(masks=masks, stats=stats_out, weights=weights or None)


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
        targets = [Target(n, _weight_view(modules[n], conv1d), _aux_view(aux, n, conv1d)) for n in names]
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


def _collect_stats(layer, modules, inps, outs, kwargs, device, needs) -> dict:
    """One forward of the dense layer per sample; inputs shared by several Linears are accumulated once (into
    one `InputStats`, the same numbers each Linear would accumulate on its own)."""
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
                    key = owner.get(name) or (x.data_ptr(), tuple(x.shape))
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
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
