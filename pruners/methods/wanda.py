"""Wanda: score |W_ij|·sqrt(scaler_row_j); per output row by default (locuslab/wanda prune_wanda)."""
import torch

from pruners.method import (
    LayerContext,
    Method,
    ModuleResult,
    Target,
    group_options,
    per_module,
)
from pruners.selection import select


def wanda_score(W: torch.Tensor, stats) -> torch.Tensor:
    return torch.abs(W) * torch.sqrt(stats.scaler_row.reshape((1, -1)).to(W.device))


def prune_module(target: Target, stats, ctx: LayerContext) -> ModuleResult:
    score = wanda_score(target.weight, stats)
    return ModuleResult(select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]))


METHOD = Method("wanda", per_module(prune_module), group_options("row"), needs=("activations",),
                help="|W|·‖x‖ (Sun et al. 2023)")
