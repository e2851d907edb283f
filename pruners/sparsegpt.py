"""SparseGPT (IST-DASLab/sparsegpt fasterprune): OBS weight updates over 128-column blocks, `<=` rule per block.

One Hessian per distinct input (q/k/v, gate/up share it) unless shared_hessian=False. If Cholesky fails,
the dampening is raised step by step (with a warning) rather than producing NaN weights.
"""
from __future__ import annotations

import warnings

from pruners.errors import PruneError
from pruners.registry import Method, Option, group_options, register


def _inverse_factor(H: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹ after dampening; raises the dampening ×10 until it factors."""
    import torch
    from pruners.selection import row_mask, threshold_mask
    diag = torch.arange(H.shape[0], device=H.device)
    mean_diag = torch.mean(torch.diag(H))
    damp_frac = percdamp
    for _ in range(8):
        Hd = H.clone()
        Hd[diag, diag] += damp_frac * mean_diag
        try:
            L = torch.linalg.cholesky(Hd)
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
            if torch.isfinite(Hinv).all():
                if damp_frac != percdamp:
                    warnings.warn(f"sparsegpt: {name}: Hessian not positive definite, dampening raised to {damp_frac}")
                return Hinv
        except RuntimeError:
            pass
        damp_frac = damp_frac * 10 if damp_frac > 0 else 1e-4
    raise PruneError(f"sparsegpt: Hessian of {name} cannot be factored even with dampening {damp_frac}")


def prune_module(W: torch.Tensor, stats, ctx):
    import torch
    from pruners.selection import row_mask, threshold_mask
    opts = ctx.options
    blocksize, percdamp = opts["block_size"], opts["percdamp"]
    rows, columns = W.shape
    H = stats.H.clone().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    cache = stats.__dict__.setdefault("_hinv", {})  # Linears sharing an input share the factorisation too
    if percdamp not in cache:
        cache[percdamp] = _inverse_factor(H, percdamp, ctx.name)
    Hinv = cache[percdamp]
    full_mask = torch.zeros_like(W, dtype=torch.bool)
    layer_mask = None
    if ctx.nm is None and opts["group"] == "layer":
        layer_mask = threshold_mask(W ** 2 / (torch.diag(Hinv).reshape((1, -1))) ** 2, ctx.sparsity)
    prunen, prunem = ctx.nm or (0, 0)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            if layer_mask is not None:
                mask1 = layer_mask[:, i1:i2]
            else:
                tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
                mask1 = threshold_mask(tmp, ctx.sparsity) if opts["group"] == "block" else row_mask(tmp, ctx.sparsity)
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    full_mask[:, dead] = True
    if not torch.isfinite(W).all():
        raise PruneError(f"sparsegpt produced non-finite weights in {ctx.name}: raise percdamp")
    return full_mask, W


METHOD = register(Method(
    "sparsegpt", prune_module,
    group_options("block") + [
        Option("percdamp", float, 0.01, min=0.0, max=10.0, help="dampening as a fraction of mean(diag H)"),
        Option("shared_hessian", bool, True, help="one Hessian per distinct input (q/k/v, gate/up); "
               "False = one per Linear as the reference"),
    ],
    needs=("hessian",), help="OBS reconstruction (Frantar & Alistarh 2023)"))
