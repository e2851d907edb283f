"""RIA: relative importance (|W|/colsum + |W|/rowsum) · (sqrt scaler_row)^a; per layer by default.

Optional for N:M: the reference's heuristic channel reallocation (`channel_permutation`), kept and applied to
the model so the saved weights are really N:M (see pruners/permutation.py).
"""
from pruners.registry import Method, Option, group_options, register


def ria_score(W, stats, a: float):
    import torch
    absW = torch.abs(W)
    return (absW / torch.sum(absW, dim=0) + absW / torch.sum(absW, dim=1).reshape(-1, 1)) \
        * (torch.sqrt(stats.scaler_row.reshape((1, -1)).to(W.device))) ** a


def prune_module(W, stats, ctx):
    from pruners.selection import nm_mask, select
    score = ria_score(W, stats, ctx.options["alpha"])
    if ctx.nm is None or not ctx.options["channel_permutation"]:
        return select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]), None
    from pruners import permutation
    n, m = ctx.nm
    plan = permutation.plan_for(ctx.model, ctx.name, W.shape[1], m)
    if isinstance(plan, str):  # e.g. the input is the residual stream: nothing to permute it with
        ctx.permutation = plan
        return nm_mask(score, n, m), None
    perm = permutation.search(score, plan, n, m, ctx.options["permutation_importance"])
    ctx.permutation = perm  # the engine applies it to this module and its producers after the layer
    return permutation.permuted_nm_mask(score, perm, n, m), None


METHOD = register(Method(
    "ria", prune_module,
    group_options("layer") + [
        Option("alpha", float, 0.5, min=0.0, max=10.0, help="exponent a of the activation term"),
        Option("channel_permutation", bool, False,
               help="N:M only (Llama/Mistral/Qwen2): search an input-channel permutation of down_proj and o_proj "
                    "as RIA's heuristic channel reallocation, then permute the weights (and gate/up, v_proj rows) "
                    "so the saved model is N:M and computes the same function; other Linears keep the plain N:M "
                    "mask; off = reference"),
        Option("permutation_importance", str, "sum", choices=("sum", "retained_degree_unstructured",
                                                               "retained_degree_per_outneuron"),
               help="column importance that orders channels for channel_permutation (reference --importance_score)"),
    ],
    needs=("activations",), help="relative importance and activations (Zhang et al. 2024)"))
