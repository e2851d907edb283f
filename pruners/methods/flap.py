"""FLAP: fluctuation-based structured pruning with bias compensation (An et al. 2024; CASIA-IVA-Lab/FLAP
`prune_flap`, `BiasGPT`, `compress`), computed as the authors' code computes it.

Units removed: whole attention heads — under grouped-query attention whole key/value groups, i.e. one key/value
head with all its query heads (q/k/v rows and o_proj columns) — and whole MLP channels (gate/up rows, down_proj
columns). The result is masks over those whole rows/columns plus, with bias compensation, one bias per o_proj /
down_proj: the removed channels' mean input times their dense weight columns, so the layer's mean output is kept.

1. Statistics, on the *dense* model (every layer sees the dense outputs of the one before): per calibration row
   (batch 1), of the inputs of o_proj and down_proj, float32, running over rows: the mean over tokens, and the
   fluctuation Σ_t (x_t − mean)² / (n+1), updated with the already-updated mean and skipping the first row, as
   the reference's aliased update does (it is not Welford's); WIFN keeps the mean squared norm instead.
2. Scores per input channel: IFV = fluctuation; WIFV (default) = fluctuation · Σ_i W_ij² (squared column norm of
   o_proj / down_proj); WIFN = mean_i |W_ij|·‖x_j‖. The o_proj score is squared.
3. Structure:
   * UL-UM (default): in every layer, floor(s·G) key/value groups (scored by the *sum* of their channels' scores)
     and floor(s·I) MLP channels with the lowest scores go. The same count in every layer, so the result shrinks
     into a stock model of the same class (`pruners.shrink`). The reference keeps every unit tied with the k-th
     lowest score (`>=`); here exactly k go (lowest index first among ties), so the count is always uniform.
     With `stock_heads` (default) fewer groups go when the model's config class would not accept the remaining
     head count (transformers' Llama needs hidden_size divisible by it): the largest accepted count ≤ floor(s·G)
     (0 always is), recorded in stats.json; `stock_heads` false removes the reference's floor(s·G).
   * AL-AM: per layer, channel scores standardised (unbiased std); a group scores the mean of its standardised
     channels; all groups and channels of all layers are ranked together and the cut is where the cumulative
     parameter weight (a group weighs int(head_dim·(2·group + 2)/3) MLP channels — the reference's 512/3 = 170 for
     multi-head attention with head size 128) comes closest to (1 − s) of the total; units scoring above the cut
     stay. Per-layer counts differ: the full shape is kept with zeroed channels; not shrinkable.
4. Bias: (mean_fp16 · removed) @ W_denseᵀ, the mean rounded to float16 as the reference hands it to `compress`.

The reference assumes multi-head attention with head size 128; here any head size works and grouped-query heads
go as whole groups (a key/value head cannot be removed while query heads still read it; a group's score
aggregates its query heads' channels: sum for UL-UM, mean of standardised scores for AL-AM — for multi-head
attention both reduce to the reference). `sparsity` s is the fraction of key/value groups and of MLP channels
removed per layer (UL-UM; floor), so about s of the attention and MLP weights, or FLAP's global parameter
budget (AL-AM); stats.json records the realised fraction per layer and overall.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from pruners.errors import PruneError
from pruners.families import ATTENTION, LLAMA_LIKE, AttentionShape, attention_shape, decoder_layers, get_family
from pruners.layerwise import dense_layer_pass
from pruners.method import Method, ModelContext, PruneResult
from pruners.options import Option
from pruners.shrink import accepts_heads

UNIFORM, ADAPTIVE = "UL-UM", "AL-AM"
NOT_SHRINKABLE = "per-layer counts differ: the full shape is kept with zeroed channels; not shrinkable"
O_PROJ = "self_attn.o_proj"


class Fluctuation:
    """FLAP's running statistics of one Linear input, one calibration row per `add_batch` (float32)."""

    def __init__(self, columns: int, device, squares: bool):
        self.rows = 0
        self.mean = torch.zeros(columns, device=device)
        self.fluc = torch.zeros(columns, device=device)
        self.squares = torch.zeros(columns, device=device) if squares else None

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.reshape(-1, inp.shape[-1]).t().float()  # [columns, tokens]
        n = self.rows
        self.mean *= n / (n + 1)
        self.mean += torch.mean(x, dim=1) / (n + 1)
        if self.squares is not None:
            self.squares *= n / (n + 1)
            self.squares += torch.norm(x, p=2, dim=1) ** 2 / (n + 1)
        elif n > 0:
            d = x - self.mean.unsqueeze(1)
            self.fluc *= (n - 1) / n
            self.fluc += torch.sum(d * d, dim=1) / (n + 1)
        self.rows += 1


def channel_score(stats: Fluctuation, weight: torch.Tensor, metric: str) -> torch.Tensor:
    """One score per input channel of `weight` ([out, in])."""
    if metric == "IFV":
        return stats.fluc
    if metric == "WIFV":
        return stats.fluc * torch.sum(weight.pow(2), dim=0)
    return (torch.abs(weight) * torch.sqrt(stats.squares).reshape(1, -1)).mean(dim=0)


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """bool mask of the k lowest scores (ties by lowest index)."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    out[torch.sort(scores, stable=True).indices[:k]] = True
    return out


def uniform_removal(group_scores: list[torch.Tensor], mlp_scores: list[torch.Tensor], sparsity: float,
                    n_groups: int | None = None):
    """UL-UM: per layer, the floor(s·G) (or `n_groups`) lowest groups and floor(s·I) lowest channels (bool masks,
    True = removed)."""
    groups = [_lowest(h, int(sparsity * h.numel()) if n_groups is None else n_groups) for h in group_scores]
    channels = [_lowest(m, int(m.numel() * sparsity)) for m in mlp_scores]
    return groups, channels


def stock_group_count(config, shape: AttentionShape, requested: int) -> int:
    """The largest number of key/value groups ≤ `requested` whose removal leaves a head count the config class
    accepts (removing none always is)."""
    return next(k for k in range(requested, -1, -1) if k == 0 or accepts_heads(config, shape.kv_heads - k, shape))


def adaptive_removal(attn_scores: torch.Tensor, mlp_scores: torch.Tensor, sparsity: float, shape: AttentionShape):
    """AL-AM over all layers: (removed groups [L, G], removed channels [L, I], threshold)."""
    def standardise(x):
        return (x - torch.mean(x, dim=1, keepdim=True)) / torch.std(x, dim=1, keepdim=True)

    layers = attn_scores.shape[0]
    groups = standardise(attn_scores).reshape(layers, shape.kv_heads, -1).mean(dim=2)
    channels = standardise(mlp_scores)
    ranked, index = torch.sort(torch.cat([groups.view(-1), channels.view(-1)]), descending=True)
    weight = torch.ones_like(index)  # int64, as the reference: a group's float weight is truncated
    weight[index < groups.numel()] = shape.head_dim * (2 * shape.group + 2) / 3
    threshold = ranked[torch.argmin(torch.abs(torch.cumsum(weight, 0) - torch.sum(weight) * (1 - sparsity)))]
    return groups <= threshold, channels <= threshold, float(threshold)


def _check_model(model: nn.Module) -> AttentionShape:
    fam = get_family(model)
    if fam.name not in LLAMA_LIKE:
        raise PruneError(f"flap removes attention heads and gated-MLP channels of Llama, Mistral and Qwen2 models "
                         f"(separate q/k/v/o projections); {fam.name} is not supported")
    shape = attention_shape(model)
    layer = decoder_layers(model)[0]
    q, k, o = (layer.get_submodule(n) for n in ("self_attn.q_proj", "self_attn.k_proj", O_PROJ))
    if q.out_features != shape.heads * shape.head_dim or k.out_features != shape.kv_heads * shape.head_dim \
            or o.in_features != q.out_features:
        raise PruneError(f"the attention projections ({q.out_features}, {k.out_features} outputs) do not match "
                         f"{shape.heads} heads and {shape.kv_heads} key/value heads of size {shape.head_dim}")
    return shape


def prune_model(model: nn.Module, calib_ids: torch.Tensor, ctx: ModelContext) -> PruneResult:
    shape = _check_model(model)
    fam = get_family(model)
    metric, structure, s = ctx.options["metric"], ctx.options["structure"], ctx.sparsity
    layers = decoder_layers(model)
    n_layers = len(layers)

    def sites(i):
        return {name: layers[i].get_submodule(name) for name in (O_PROJ, fam.mlp_out)}

    def stats_for(x):
        return Fluctuation(x.shape[-1], x.device, squares=metric == "WIFN")

    attn, mlp, means, times = [], [], [], []
    t0 = time.perf_counter()
    for i, stats in dense_layer_pass(model, calib_ids, ctx.device, ctx.calib_device, sites, stats_for):
        site = sites(i)
        attn.append(channel_score(stats[O_PROJ], site[O_PROJ].weight.data.float(), metric).cpu() ** 2)
        mlp.append(channel_score(stats[fam.mlp_out], site[fam.mlp_out].weight.data.float(), metric).cpu())
        means.append({name: stats[name].mean.cpu() for name in site})
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ctx.report(0.9 * (i + 1) / n_layers, f"flap: statistics of layer {i + 1}/{n_layers}")

    threshold, requested = None, int(s * shape.kv_heads)
    n_groups = stock_group_count(model.config, shape, requested) if ctx.options["stock_heads"] else requested
    if structure == UNIFORM:
        groups, channels = uniform_removal([a.reshape(shape.kv_heads, -1).sum(dim=1) for a in attn], mlp, s,
                                           n_groups)
    else:
        groups, channels, threshold = adaptive_removal(torch.stack(attn), torch.stack(mlp), s, shape)
    for i in range(n_layers):
        for what, removed in (("attention head (all key/value groups)", groups[i]), ("MLP channel", channels[i])):
            if bool(removed.all()):
                hint = " or use structure UL-UM" if structure == ADAPTIVE else ""
                raise PruneError(f"flap {structure} at sparsity {s:g} would remove every {what} of decoder layer "
                                 f"{i}: lower the sparsity{hint}", "sparsity")

    masks, weights, layer_info, layer_sparsity = {}, {}, [], []
    for i in range(n_layers):
        prefix = f"{fam.layers_path}.{i}."
        layer_masks = unit_masks(layers[i], fam.mlp_in, fam.mlp_out, shape, groups[i], channels[i])
        masks.update({prefix + k: v for k, v in layer_masks.items()})
        if ctx.options["bias_compensation"]:
            weights.update(compensation(layers[i], prefix, fam.mlp_out, means[i], shape, groups[i], channels[i]))
        removed_groups = torch.nonzero(groups[i]).flatten().tolist()
        layer_info.append({"removed_kv_groups": removed_groups,
                           "removed_heads": [g * shape.group + j for g in removed_groups for j in range(shape.group)],
                           "removed_mlp_channels": int(channels[i].sum())})
        layer_sparsity.append(sum(int(m.sum()) for m in layer_masks.values())
                              / sum(m.numel() for m in layer_masks.values()))
        ctx.report(0.9 + 0.1 * (i + 1) / n_layers, f"flap: layer {i + 1}/{n_layers} decided")
    structured = {
        "kind": "heads+channels", "metric": metric, "structure": structure,
        "shrinkable": structure == UNIFORM, "bias_compensation": ctx.options["bias_compensation"],
        "kv_groups": shape.kv_heads, "heads_per_group": shape.group, "head_dim": shape.head_dim,
        "intermediate_size": int(mlp[0].numel()), "layers": layer_info,
        "sparsity_means": ("per layer, floor(sparsity·G) key/value groups and floor(sparsity·I) MLP channels"
                           if structure == UNIFORM else "FLAP's global parameter budget (AL-AM)"),
    }
    if structure == ADAPTIVE:
        structured |= {"threshold": threshold, "note": NOT_SHRINKABLE}
    elif n_groups != requested:
        structured["note"] = (f"{n_groups} of the floor(sparsity·{shape.kv_heads}) = {requested} key/value groups "
                              f"removed per layer: {type(model.config).__name__} does not accept "
                              f"{(shape.kv_heads - requested) * shape.group} heads (stock_heads)")
    return PruneResult(masks, {"structured": structured, "layer_sparsity": layer_sparsity, "layer_times_s": times},
                       weights or None)


def unit_masks(layer: nn.Module, mlp_in: tuple[str, ...], mlp_out: str, shape: AttentionShape,
               groups: torch.Tensor, channels: torch.Tensor) -> dict[str, torch.Tensor]:
    """{local weight name: uint8 mask} of one layer: removed groups → q/k/v rows and o_proj columns of the group's
    heads, removed channels → gate/up rows and down_proj columns."""
    head_rows = groups.repeat_interleave(shape.group * shape.head_dim)  # q rows = o_proj columns
    kv_rows = groups.repeat_interleave(shape.head_dim)
    out = {}
    for name, rows, cols in ((ATTENTION[0], head_rows, None), (ATTENTION[1], kv_rows, None),
                             (ATTENTION[2], kv_rows, None), (ATTENTION[3], None, head_rows),
                             *((n, channels, None) for n in mlp_in), (mlp_out, None, channels)):
        w = layer.get_submodule(name).weight
        m = rows[:, None].expand(w.shape) if rows is not None else cols[None, :].expand(w.shape)
        out[name + ".weight"] = m.to(torch.uint8).contiguous()
    return out


def compensation(layer: nn.Module, prefix: str, mlp_out: str, means: dict, shape: AttentionShape,
                 groups: torch.Tensor, channels: torch.Tensor) -> dict[str, torch.Tensor]:
    """FLAP's biases: (float16-rounded mean input · removed) @ W_denseᵀ, added to any bias the module has."""
    out = {}
    head_cols = groups.repeat_interleave(shape.group * shape.head_dim)
    for name, removed in ((O_PROJ, head_cols), (mlp_out, channels)):
        module = layer.get_submodule(name)
        w = module.weight.data.float().cpu()
        bias = (means[name].half().float() * removed) @ w.T
        if module.bias is not None:
            bias = bias + module.bias.data.float().cpu()
        out[prefix + name + ".bias"] = bias.to(module.weight.dtype)
    return out


METHOD = Method(
    "flap", options=(
        Option("metric", str, "WIFV", choices=("WIFV", "WIFN", "IFV"),
               help="channel score: WIFV = input fluctuation × squared weight column norm (FLAP's default), "
                    "IFV = fluctuation only, WIFN = |W|·‖x‖ averaged over outputs"),
        Option("structure", str, UNIFORM, choices=(UNIFORM, ADAPTIVE),
               help="UL-UM: the same number of heads/channels removed in every layer (shrinks into a smaller "
                    f"stock model); AL-AM: adaptive across layers — {NOT_SHRINKABLE}"),
        Option("stock_heads", bool, True,
               help="UL-UM: remove only as many key/value groups as a stock config of the model's class accepts "
                    "(transformers' Llama needs hidden_size divisible by the head count), fewer than "
                    "floor(sparsity·groups) if needed; false = the reference's count (the attention may then "
                    "keep its full shape when saved)"),
        Option("bias_compensation", bool, True,
               help="set o_proj/down_proj biases to the removed channels' mean contribution (FLAP); Mistral and "
                    "Qwen2 have no such biases, so their smaller model needs false"),
    ), structured=True, prune_model=prune_model,
    help="removes whole attention heads (key/value groups) and MLP channels by input fluctuation, with bias "
         "compensation (An et al. 2024); sparsity = fraction of groups and channels removed per layer")
