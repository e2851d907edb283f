"""SparseGPT (IST-DASLab/sparsegpt fasterprune): OBS weight updates over 128-column blocks, `<=` rule per block.

Two paths, same masks bit for bit:
- shared_hessian=True (default): one Hessian and one factorisation per distinct input, and the Linears that
  read it (q/k/v, gate/up) are stacked row-wise and swept *together* (`prune_group`, called by the engine).
  The OBS sweep is row-independent — each row's update only uses that row's errors and the shared H⁻¹ — so one
  sweep over the stacked rows does the per-Linear sweeps at once, with one Python loop over the columns
  instead of one per Linear. Only the mask selection couples rows, and it stays per original Linear (the
  block threshold is taken over that Linear's rows alone). The sweep also holds the weights transposed (input
  columns contiguous) and takes the block threshold with numpy's introselect, yet computes every value with
  the same floating-point operations in the same order as the reference, so masks and weights equal the
  per-Linear path exactly (tests/pruners/test_sparsegpt.py).
- shared_hessian=False: the reference — one Hessian, one factorisation and the reference's column loop per
  Linear (kept for parity checks and as the benchmark's baseline).

If Cholesky fails, the dampening is raised step by step (with a warning) rather than producing NaN weights.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from pruners.errors import PruneError
from pruners.method import LayerContext, Method, ModuleResult, Target, group_options
from pruners.options import Option
from pruners.selection import row_mask, threshold_mask


def _inverse_factor(H: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of H⁻¹ after dampening; raises the dampening ×10 until it factors."""
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


def _factor(stats, device, percdamp: float, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of the dampened H⁻¹, dead-input flags), computed once per input statistic.

    Dead inputs (H_jj = 0) get H_jj = 1, as the reference does; their weights are zeroed by the caller.
    Linears sharing an input share the statistic object, hence this cache.
    """
    cache = stats.__dict__.setdefault("_hinv", {})
    key = (percdamp, str(device))
    if key not in cache:
        H = stats.H.clone().to(device)
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        cache[key] = (_inverse_factor(H, percdamp, name), dead)
    return cache[key]


def _reference_sweep(W: torch.Tensor, Hinv: torch.Tensor, sparsity: float, nm, group: str, blocksize: int):
    """The reference's fasterprune loop on one Linear, in place on W; returns the bool mask."""
    rows, columns = W.shape
    full_mask = torch.zeros_like(W, dtype=torch.bool)
    layer_mask = None
    if nm is None and group == "layer":
        layer_mask = threshold_mask(W ** 2 / (torch.diag(Hinv).reshape((1, -1))) ** 2, sparsity)
    prunen, prunem = nm or (0, 0)
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
                mask1 = threshold_mask(tmp, sparsity) if group == "block" else row_mask(tmp, sparsity)
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
    return full_mask


def _threshold_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """`selection.threshold_mask` (prune every score <= the floor(numel·s)+1-th smallest), same result.

    On CPU the order statistic comes from numpy's introselect, about 10× faster than torch.kthvalue here;
    it is the same value, so the masks are the same.
    """
    if sparsity <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    k = int(score.numel() * sparsity)
    if score.device.type == "cpu":
        thresh = float(np.partition(score.numpy().reshape(-1), k)[k])
    else:
        thresh = torch.kthvalue(score.flatten(), k + 1).values
    return score <= thresh


def _stacked_sweep(W: torch.Tensor, Hinv: torch.Tensor, segments: list[tuple[int, int]], sparsity: float,
                   nm, group: str, blocksize: int):
    """One OBS sweep over row-stacked Linears (rows [r0, r1) of W = one Linear), in place; returns the mask.

    Arithmetic per value is the reference's (same products, same subtraction order), so results are
    identical to `_reference_sweep` run on each Linear: the weights are held transposed (`Wt[j]` = input
    column j, contiguous, so a block is a plain slice), column i's pruning error `where(mask, w, 0) / d`
    equals the reference's `(w - q) / d`, and the rank-1 update skips column i itself, whose updated value
    the reference discards (it keeps q). The trailing-columns update is one GEMM per Linear with the
    reference's operands (BLAS may round a product of another shape or layout differently: seen for 3 rows).
    """
    rows, columns = W.shape
    Wt = W.t().contiguous()  # [columns, rows]
    mask_t = torch.zeros_like(Wt, dtype=torch.bool)
    hdiag = torch.diag(Hinv)
    if nm is None and group == "layer":
        score = W ** 2 / (hdiag.reshape((1, -1))) ** 2
        for r0, r1 in segments:
            mask_t[:, r0:r1] = _threshold_mask(score[r0:r1], sparsity).t()
    prunen, prunem = nm or (0, 0)
    zero = W.new_zeros(())
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1t = Wt[i1:i2]  # [count, rows], updated in place
        mask1t = mask_t[i1:i2]
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = hdiag[i1:i2]
        if prunen == 0 and group != "layer":
            tmp = W1t ** 2 / (d1.reshape((-1, 1))) ** 2
            if group == "block":  # the reference's comparison group: one Linear's rows of this block
                for r0, r1 in segments:
                    mask1t[:, r0:r1] = _threshold_mask(tmp[:, r0:r1], sparsity)
            else:
                mask1t.copy_(row_mask(tmp.t(), sparsity).t())
        Err1t = torch.empty_like(W1t)
        w_rows, e_rows, m_rows = W1t.unbind(0), Err1t.unbind(0), mask1t.unbind(0)
        h_diag, h_cols = Hinv1.diagonal().unbind(0), Hinv1.unsqueeze(2).unbind(0)  # h_cols[i] = Hinv1[i, :, None]
        for i in range(count):
            if prunen != 0 and i % prunem == 0:
                tmp = W1t[i:i + prunem] ** 2 / (d1[i:i + prunem].reshape((-1, 1))) ** 2
                mask1t.t().scatter_(1, i + torch.topk(tmp.t(), prunen, dim=1, largest=False)[1], True)
            err = e_rows[i]
            torch.where(m_rows[i], w_rows[i], zero, out=err)
            err.div_(h_diag[i])
            if i + 1 < count:
                W1t[i + 1:].sub_(h_cols[i][i + 1:] * err)
        W1t.masked_fill_(mask1t, 0)
        if i2 < columns:
            for r0, r1 in segments:
                Wt[i2:, r0:r1] -= Err1t[:, r0:r1].t().contiguous().matmul(Hinv[i1:i2, i2:]).t()
    W.copy_(Wt.t())
    return mask_t.t().contiguous()


def _check(W: torch.Tensor, name: str) -> None:
    if not torch.isfinite(W).all():
        raise PruneError(f"sparsegpt produced non-finite weights in {name}: raise percdamp")


def _prune_one(W: torch.Tensor, stats, name: str, ctx: LayerContext) -> ModuleResult:
    """One Linear. shared_hessian=False runs the reference loop; otherwise the stacked sweep on one Linear."""
    opts = ctx.options
    Hinv, dead = _factor(stats, W.device, opts["percdamp"], name)
    W[:, dead] = 0
    if opts["shared_hessian"]:
        mask = _stacked_sweep(W, Hinv, [(0, W.shape[0])], ctx.sparsity, ctx.nm, opts["group"], opts["block_size"])
    else:
        mask = _reference_sweep(W, Hinv, ctx.sparsity, ctx.nm, opts["group"], opts["block_size"])
    mask[:, dead] = True
    _check(W, name)
    return ModuleResult(mask, W)


def _prune_stacked(targets: list[Target], stats, ctx: LayerContext) -> list[ModuleResult]:
    """Linears reading one input (one shared `stats`): one sweep over their stacked rows, split back.

    Masks and weights are those `_prune_one` gives each Linear (see `_stacked_sweep`).
    """
    if len({t.weight.shape[1] for t in targets}) != 1:
        raise PruneError(f"sparsegpt: Linears sharing an input must have the same input size: "
                         f"{[t.name for t in targets]}")
    opts = ctx.options
    Hinv, dead = _factor(stats, targets[0].weight.device, opts["percdamp"], targets[0].name)
    W = torch.cat([t.weight for t in targets])
    W[:, dead] = 0
    bounds, r = [], 0
    for t in targets:
        bounds.append((r, r + t.weight.shape[0]))
        r += t.weight.shape[0]
    mask = _stacked_sweep(W, Hinv, bounds, ctx.sparsity, ctx.nm, opts["group"], opts["block_size"])
    mask[:, dead] = True
    out = []
    for (r0, r1), t in zip(bounds, targets):
        _check(W[r0:r1], t.name)
        out.append(ModuleResult(mask[r0:r1].clone(), W[r0:r1].clone()))
    return out


def prune(targets: list[Target], stats, ctx: LayerContext) -> list[ModuleResult]:
    if len(targets) > 1:
        return _prune_stacked(targets, stats, ctx)
    return [_prune_one(targets[0].weight, stats, targets[0].name, ctx)]


METHOD = Method(
    "sparsegpt", prune,
    group_options("block") + (
        Option("percdamp", float, 0.01, min=0.0, max=10.0, help="dampening as a fraction of mean(diag H)"),
        Option("shared_hessian", bool, True, help="one Hessian per distinct input (q/k/v, gate/up), their Linears "
               "swept together (same masks); False = one Hessian and one sweep per Linear as the reference"),
    ),
    needs=("hessian",), joint=lambda options: options["shared_hessian"],
    help="OBS reconstruction (Frantar & Alistarh 2023)")
