"""RIA: relative importance (|W|/colsum + |W|/rowsum) · (sqrt scaler_row)^a; per layer by default."""
from pruners.registry import Method, Option, group_options, register


def ria_score(W, stats, a: float):
    import torch
    from pruners.selection import select
    absW = torch.abs(W)
    return (absW / torch.sum(absW, dim=0) + absW / torch.sum(absW, dim=1).reshape(-1, 1)) \
        * (torch.sqrt(stats.scaler_row.reshape((1, -1)).to(W.device))) ** a


def prune_module(W, stats, ctx):
    import torch
    from pruners.selection import select
    score = ria_score(W, stats, ctx.options["alpha"])
    return select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]), None


METHOD = register(Method(
    "ria", prune_module,
    group_options("layer") + [Option("alpha", float, 0.5, min=0.0, max=10.0, help="exponent a of the activation term")],
    needs=("activations",), help="relative importance and activations (Zhang et al. 2024)"))
