"""GBLM-Pruner: |W|·sqrt(scaler_row) + |W|·G with G the per-weight gradient l2 norm (fp16), per row."""
from pruners.registry import Method, Option, group_options, register


def prune_module(W, stats, ctx):
    import torch
    from pruners.selection import select
    from pruners.wanda import wanda_score
    score = wanda_score(W, stats) + torch.abs(W) * ctx.gradient.to(W.device).float()
    return select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]), None


METHOD = register(Method(
    "gblm", prune_module,
    group_options("row") + [Option("scale", float, 100.0, min=1e-6, max=1e6, help="gradient scale before squaring")],
    needs=("activations", "gradients"), help="gradient + activation scores (Das et al. 2023)"))
