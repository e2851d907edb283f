"""Wanda: score |W_ij|·sqrt(scaler_row_j); per output row by default (locuslab/wanda prune_wanda)."""
from pruners.registry import Method, group_options, register


def wanda_score(W, stats):
    import torch
    from pruners.selection import select
    return torch.abs(W) * torch.sqrt(stats.scaler_row.reshape((1, -1)).to(W.device))


def prune_module(W, stats, ctx):
    import torch
    from pruners.selection import select
    return select(wanda_score(W, stats), ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]), None


METHOD = register(Method("wanda", prune_module, group_options("row"), needs=("activations",),
                         help="|W|·‖x‖ (Sun et al. 2023)"))
