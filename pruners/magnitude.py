"""Magnitude pruning: score |W|; per layer with the `<=` rule by default (locuslab/wanda prune_magnitude)."""
from pruners.registry import Method, group_options, register


def prune_module(W, stats, ctx):
    from pruners.selection import select
    score = W.abs()
    return select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]), None


METHOD = register(Method("magnitude", prune_module, group_options("layer"), needs=(),
                         help="|W|, no calibration"))
