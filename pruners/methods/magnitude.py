"""Magnitude pruning: score |W|; per layer with the `<=` rule by default (locuslab/wanda prune_magnitude)."""
from pruners.method import (
    LayerContext,
    Method,
    ModuleResult,
    Target,
    group_options,
    per_module,
)
from pruners.selection import select


def prune_module(target: Target, stats, ctx: LayerContext) -> ModuleResult:
    score = target.weight.abs()
    return ModuleResult(select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]))


METHOD = Method("magnitude", per_module(prune_module), group_options("layer"), needs=(),
                help="|W|, no calibration")
