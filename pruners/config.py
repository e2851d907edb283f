"""Typed configuration and result of a pruning run."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pruners.errors import PruneError


@dataclass
class PruneConfig:
    method: str
    sparsity: float = 0.5
    pattern: str = "unstructured"  # or "N:M", e.g. "2:4"
    options: dict = field(default_factory=dict)
    seed: int = 0
    device: str | None = None
    calib_device: str | None = None


@dataclass
class PruneResult:
    masks: dict  # {param name: uint8 tensor, param shape, 1 = pruned}
    stats: dict
    weights: dict | None = None


@dataclass
class ProgressEvent:
    fraction: float
    message: str


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for unstructured, (N, M) for 'N:M'; bad → PruneError."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(x) for x in pattern.split(":"))
    except ValueError:
        raise PruneError(f"pattern {pattern!r} is neither 'unstructured' nor 'N:M' (e.g. 2:4)")
    if not 0 < n < m:
        raise PruneError(f"pattern {pattern}: need 0 < N < M (N weights pruned in every M consecutive inputs)")
    return n, m


def validate_sparsity(sparsity: Any) -> float:
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise PruneError(f"sparsity {sparsity!r} is not a number: give a fraction in [0, 1)")
    if not 0.0 <= s < 1.0:
        raise PruneError(f"sparsity {s} is outside [0, 1): give the fraction of weights to prune, e.g. 0.5")
    return s
