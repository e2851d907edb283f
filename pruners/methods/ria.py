"""RIA: relative importance (|W|/colsum + |W|/rowsum) · (sqrt scaler_row)^a; per layer by default.

Optional for N:M: the reference's heuristic channel reallocation (`channel_permutation`), kept and applied to
the model so the saved weights are really N:M (see pruners/permutation.py).
"""
import torch

from pruners import permutation
from pruners.method import (
    LayerContext,
    Method,
    ModuleResult,
    Target,
    group_options,
    per_module,
)
from pruners.options import Option
from pruners.selection import nm_mask, select


def ria_score(W: torch.Tensor, stats, a: float) -> torch.Tensor:
    absW = torch.abs(W)
    return (absW / torch.sum(absW, dim=0) + absW / torch.sum(absW, dim=1).reshape(-1, 1)) \
        * (torch.sqrt(stats.scaler_row.reshape((1, -1)).to(W.device))) ** a


def prune_module(target: Target, stats, ctx: LayerContext) -> ModuleResult:
    W, opts = target.weight, ctx.options
    score = ria_score(W, stats, opts["alpha"])
    if ctx.nm is None or not opts["channel_permutation"]:
        return ModuleResult(select(score, ctx.sparsity, ctx.nm, opts["group"], opts["block_size"]))
    n, m = ctx.nm
    plan = permutation.plan_for(ctx.model, target.name, W.shape[1], m)
    if isinstance(plan, str):  # e.g. the input is the residual stream: nothing to permute it with
        return ModuleResult(nm_mask(score, n, m), permutation=plan)
    perm = permutation.search(score, plan, n, m, opts["permutation_importance"])
    return ModuleResult(permutation.permuted_nm_mask(score, perm, n, m), permutation=perm)


METHOD = Method(
    "ria", per_module(prune_module),
    group_options("layer") + (
        Option("alpha", float, 0.5, min=0.0, max=10.0, help="exponent a of the activation term"),
        Option("channel_permutation", bool, False,
               help="N:M only (Llama/Mistral/Qwen2): search an input-channel permutation of down_proj and o_proj "
                    "as RIA's heuristic channel reallocation, then permute the weights (and gate/up, v_proj rows) "
                    "so the saved model is N:M and computes the same function; other Linears keep the plain N:M "
                    "mask; off = reference"),
        Option("permutation_importance", str, "sum", choices=permutation.IMPORTANCE,
               help="column importance that orders channels for channel_permutation (reference --importance_score)"),
    ),
    needs=("activations",), help="relative importance and activations (Zhang et al. 2024)")
