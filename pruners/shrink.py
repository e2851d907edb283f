"""A really smaller model from a structured pruning result: a stock transformers model of the same class, with the
removed units gone, that `save_pretrained` writes and `AutoModelForCausalLM.from_pretrained` loads without custom
code.

What was removed is read from the masks alone (masks stay the common currency, so a saved run shrinks too):

* a decoder layer whose prunable weights are all masked (ShortGPT) — dropped, `num_hidden_layers` (and a
  per-layer `layer_types`) shortened; its output biases must be zero, so it added nothing to the residual stream;
* Llama / Mistral / Qwen2: a key/value group whose q/k/v rows and o_proj columns are all masked, and an MLP
  channel whose gate/up rows and down_proj column are all masked (FLAP) — dropped, with `num_attention_heads`,
  `num_key_value_heads` and `intermediate_size` reduced and `head_dim` written explicitly. A stock config has one
  count for all layers, so units are dropped only where every kept layer lost the same number, and heads only
  in numbers the class's own config accepts (transformers' `LlamaConfig` requires `hidden_size` divisible by
  `num_attention_heads` even with an explicit `head_dim`); otherwise that part keeps its full shape with zeroed
  rows/columns (recorded in the returned summary). FLAP's UL-UM removes only accepted head counts by default.

Biases: FLAP's compensation adds o_proj / down_proj biases. Llama's config switches (`attention_bias`,
`mlp_bias`) give every projection of the attention / MLP a bias, so the extra ones are zero; Mistral and Qwen2
have no such switch, so a non-zero bias there is refused (prune with `bias_compensation` false). OPT, GPT-2 and
GPT-NeoX shrink by whole layers only (FLAP refuses them: fused or biased projections).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from pruners.errors import PruneError
from pruners.families import (
    ATTENTION,
    LLAMA_LIKE,
    AttentionShape,
    attention_shape,
    decoder_layers,
    get_family,
    prunable_modules,
)

# per family: config switch that gives every Linear under a module prefix a bias
BIAS_SWITCHES = {"llama": {"self_attn.": "attention_bias", "mlp.": "mlp_bias"}}


@dataclass
class LayerUnits:
    """What stays of one decoder layer (`groups` / `channels`: kept indices; None = all)."""

    removed: bool = False
    groups: list[int] | None = None
    channels: list[int] | None = None


@dataclass
class Plan:
    layers: list[LayerUnits]
    kept_full_shape: list[str] = field(default_factory=list)


def _whole(mask: torch.Tensor | None, dim: int, units: int) -> torch.Tensor | None:
    """Per unit (rows when dim=1, columns when dim=0, split into `units` equal blocks): all masked?"""
    if mask is None:
        return None
    full = mask.bool().all(dim=dim)
    return full.reshape(units, -1).all(dim=1)


def plan_from_masks(model: nn.Module, masks: dict) -> Plan:
    """Which layers, key/value groups and MLP channels the masks remove entirely, made uniform across layers."""
    fam = get_family(model)
    layers = decoder_layers(model)
    shape = attention_shape(model) if fam.name in LLAMA_LIKE else None
    units = []
    for i in range(len(layers)):
        names = [n + ".weight" for n in prunable_modules(model, i)]
        if names and all(n in masks and bool(masks[n].bool().all()) for n in names):
            units.append(LayerUnits(removed=True))
            continue
        if shape is None:
            units.append(LayerUnits())
            continue
        prefix = f"{fam.layers_path}.{i}."
        get = lambda local: masks.get(prefix + local + ".weight")  # noqa: E731
        parts = [_whole(get(ATTENTION[0]), 1, shape.kv_heads), _whole(get(ATTENTION[1]), 1, shape.kv_heads),
                 _whole(get(ATTENTION[2]), 1, shape.kv_heads), _whole(get(ATTENTION[3]), 0, shape.kv_heads)]
        group_gone = torch.stack(parts).all(dim=0) if all(p is not None for p in parts) else None
        mlp = [get(n) for n in fam.mlp_in] + [get(fam.mlp_out)]
        chan_gone = None
        if all(m is not None for m in mlp):
            chan_gone = torch.stack([m.bool().all(dim=1) for m in mlp[:-1]] + [mlp[-1].bool().all(dim=0)]).all(dim=0)
        units.append(LayerUnits(groups=_kept(group_gone), channels=_kept(chan_gone)))
    plan = Plan(units)
    kept = [u for u in units if not u.removed]
    for attr, what in (("groups", "attention heads"), ("channels", "MLP channels")):
        counts = {len(getattr(u, attr)) if getattr(u, attr) is not None else None for u in kept}
        if len(counts) > 1:
            plan.kept_full_shape.append(f"{what}: per-layer counts differ ({sorted(counts, key=str)} kept), so the "
                                        "full shape is kept with zeroed rows/columns")
            for u in kept:
                setattr(u, attr, None)
    groups = kept[0].groups if kept else None
    if shape is not None and groups is not None and (not groups or not accepts_heads(model.config, len(groups), shape)):
        plan.kept_full_shape.append(
            f"attention heads: {len(groups) * shape.group} heads are not a head count {type(model.config).__name__} "
            f"accepts (hidden_size {model.config.hidden_size}), so the full shape is kept with zeroed heads")
        for u in kept:
            u.groups = None
    if kept and kept[0].channels == []:
        plan.kept_full_shape.append("MLP channels: every channel is removed, so the full shape is kept (zeroed)")
        for u in kept:
            u.channels = None
    return plan


def accepts_heads(config, kv_groups: int, shape: AttentionShape) -> bool:
    """Whether a stock config of this class accepts `kv_groups` key/value heads (× the group size as query heads)
    with the same head size: its own validation decides (a config that fails it unchanged accepts anything)."""
    validate = getattr(config, "validate", None)
    if validate is None:
        return True
    try:
        validate()
    except Exception:  # noqa: BLE001 — the unchanged config already fails: nothing to learn from it
        return True
    trial = copy.deepcopy(config)
    trial.num_attention_heads, trial.num_key_value_heads, trial.head_dim = \
        kv_groups * shape.group, kv_groups, shape.head_dim
    try:
        trial.validate()
    except Exception as err:  # noqa: BLE001 — transformers' strict-dataclass errors are not ValueErrors
        return "head" not in str(err) and "hidden" not in str(err)
    return True


def _kept(gone: torch.Tensor | None) -> list[int] | None:
    if gone is None or not bool(gone.any()):
        return None
    return torch.nonzero(~gone).flatten().tolist()


def check_shrinkable(model: nn.Module, options: dict) -> None:
    """Before pruning: refuse what `shrink` would refuse after it (a bias the model class cannot hold)."""
    fam = get_family(model)
    if options.get("bias_compensation") and fam.name not in BIAS_SWITCHES:
        raise PruneError(f"{type(model).__name__} has no o_proj/down_proj bias, so FLAP's compensation bias cannot "
                         "be saved in a smaller stock model of that class: prune with bias_compensation false",
                         "options.bias_compensation")


def shrink(model: nn.Module, masks: dict) -> tuple[nn.Module, dict]:
    """(a new, smaller model of the same class computing what the pruned `model` computes, a summary).

    `model` is the pruned model (masks applied, compensation biases in place), as `pruners.prune` leaves it or
    `nsa.masks.apply_masks` makes it from a run's files.
    """
    fam = get_family(model)
    plan = plan_from_masks(model, masks)
    layers = decoder_layers(model)
    kept_layers = [i for i, u in enumerate(plan.layers) if not u.removed]
    if not kept_layers:
        raise PruneError("the masks remove every decoder layer: nothing would be left to save")
    for i, u in enumerate(plan.layers):
        if u.removed:
            _check_silent(layers[i], i, fam.prunable)
    shape = attention_shape(model) if fam.name in LLAMA_LIKE else None
    first = plan.layers[kept_layers[0]]
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(kept_layers)
    if isinstance(getattr(cfg, "layer_types", None), list) and len(cfg.layer_types) == len(layers):
        cfg.layer_types = [cfg.layer_types[i] for i in kept_layers]
    if shape is not None:
        groups = len(first.groups) if first.groups is not None else shape.kv_heads
        cfg.num_attention_heads = groups * shape.group
        cfg.num_key_value_heads = groups
        cfg.head_dim = shape.head_dim
        if first.channels is not None:
            cfg.intermediate_size = len(first.channels)
    params = dict(model.named_parameters())
    for prefix, switch in BIAS_SWITCHES.get(fam.name, {}).items():
        if any(n.endswith(".bias") and f".{prefix}" in n for n in params):
            setattr(cfg, switch, True)
    dtype = next(model.parameters()).dtype
    small = type(model)(cfg).to(dtype).eval()
    small.load_state_dict(_state_dict(model, small, plan, kept_layers, shape, fam), strict=True)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    summary = {"params_before": before, "params_after": after,
               "removed_layers": [i for i, u in enumerate(plan.layers) if u.removed],
               "num_hidden_layers": [len(layers), len(kept_layers)], "kept_full_shape": plan.kept_full_shape,
               "shrunk": after < before}
    if shape is not None:
        summary |= {"num_attention_heads": [shape.heads, cfg.num_attention_heads],
                    "num_key_value_heads": [shape.kv_heads, cfg.num_key_value_heads],
                    "intermediate_size": [model.config.intermediate_size, cfg.intermediate_size]}
    return small, summary


def _check_silent(layer: nn.Module, index: int, prunable: tuple[str, ...]) -> None:
    """A fully masked layer adds nothing to the residual stream only if its pruned Linears' biases are zero."""
    for name in prunable:
        bias = getattr(layer.get_submodule(name), "bias", None)
        if bias is not None and bool(bias.detach().ne(0).any()):
            raise PruneError(f"decoder layer {index} is fully masked but its {name}.bias is not zero: removing the "
                             "layer would change the model")


def _rows_and_cols(local: str, u: LayerUnits, shape: AttentionShape | None, fam) -> tuple:
    """(kept output rows, kept input columns) of a weight/bias `local` (e.g. "self_attn.q_proj.weight")."""
    module, _, kind = local.rpartition(".")
    rows = cols = None
    if shape is not None and u.groups is not None:
        heads = torch.tensor([g * shape.group + j for g in u.groups for j in range(shape.group)])
        head_idx = (heads[:, None] * shape.head_dim + torch.arange(shape.head_dim)).flatten()
        kv_idx = (torch.tensor(u.groups)[:, None] * shape.head_dim + torch.arange(shape.head_dim)).flatten()
        rows = {ATTENTION[0]: head_idx, ATTENTION[1]: kv_idx, ATTENTION[2]: kv_idx}.get(module)
        cols = head_idx if module == ATTENTION[3] else None
    if shape is not None and u.channels is not None:
        channels = torch.tensor(u.channels)
        if module in fam.mlp_in:
            rows = channels
        elif module == fam.mlp_out:
            cols = channels
    return rows, (cols if kind == "weight" else None)


def _state_dict(model, small, plan: Plan, kept_layers: list[int], shape, fam) -> dict:
    old = model.state_dict()
    used, out = set(), {}
    layer_prefix = fam.layers_path + "."
    for key, target in small.state_dict().items():
        old_key, units, local = key, None, None
        if key.startswith(layer_prefix):
            j, _, local = key[len(layer_prefix):].partition(".")
            old_key = f"{layer_prefix}{kept_layers[int(j)]}.{local}"
            units = plan.layers[kept_layers[int(j)]]
        src = old.get(old_key)
        used.add(old_key)
        if src is None:  # a bias the config switch adds to a Linear that had none
            out[key] = torch.zeros_like(target)
            continue
        if units is not None:
            rows, cols = _rows_and_cols(local, units, shape, fam)
            if rows is not None:
                src = src.index_select(0, rows.to(src.device))
            if cols is not None:
                src = src.index_select(1, cols.to(src.device))
        if src.shape != target.shape:
            raise PruneError(f"cannot shrink {old_key}: {tuple(src.shape)} does not fit {tuple(target.shape)}")
        out[key] = src
    for key, value in old.items():
        dropped_layer = key.startswith(layer_prefix) and plan.layers[int(key[len(layer_prefix):].split(".")[0])].removed
        if key not in used and not dropped_layer and bool(value.ne(0).any()):
            raise PruneError(f"{type(model).__name__} has no place for {key} in its config (no bias switch): a stock "
                             "model of this class cannot hold it; for FLAP prune with bias_compensation false")
    return out
