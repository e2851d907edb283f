"""Turn scores into masks: comparison groups (row / layer / block) with the references' count rules, and N:M.

Row groups prune exactly floor(cols·s) per row after a stable ascending sort (wanda). Layer and block groups
prune every score `<=` the k-th smallest, k = floor(numel·s) (magnitude, RIA, SparseGPT): one extra entry
per group, as the reference code does.
"""
from __future__ import annotations

import torch


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """score [rows, cols] → bool mask, floor(cols·s) lowest of each row pruned.

    Same entries as a stable ascending sort taking the first k (wanda), but O(n): everything below the
    row's k-th value, then ties at that value by lowest column index.
    """
    k = int(score.shape[1] * sparsity)
    if k == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    t = torch.kthvalue(score, k, dim=1, keepdim=True).values  # [rows, 1]
    below = score < t
    need = k - below.sum(dim=1, keepdim=True)  # [rows, 1] ties to take
    eq = score == t
    return below | (eq & (eq.cumsum(dim=1) <= need))


def threshold_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune all entries <= the floor(numel·s)-th smallest score (reference `<=` rule)."""
    if sparsity <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    k = int(score.numel() * sparsity)
    # the (k+1)-th smallest value equals sort(score)[k] exactly; kthvalue is O(n) instead of a full sort
    thresh = torch.kthvalue(score.flatten(), k + 1).values
    return score <= thresh


def block_mask(score: torch.Tensor, sparsity: float, block_size: int) -> torch.Tensor:
    mask = torch.zeros_like(score, dtype=torch.bool)
    for i in range(0, score.shape[1], block_size):
        mask[:, i:i + block_size] = threshold_mask(score[:, i:i + block_size], sparsity)
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per row, the n lowest scores of every group of m consecutive inputs are pruned."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    for i in range(0, score.shape[1], m):
        tmp = score[:, i:i + m].float()
        mask.scatter_(1, i + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    return mask


def select(score: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, group: str,
           block_size: int = 128) -> torch.Tensor:
    if nm is not None:
        return nm_mask(score, *nm)
    if group == "row":
        return row_mask(score, sparsity)
    if group == "layer":
        return threshold_mask(score, sparsity)
    return block_mask(score, sparsity, block_size)
