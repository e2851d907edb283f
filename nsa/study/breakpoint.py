"""The sharp dropping point of an accuracy-vs-sparsity curve, with an interval over seeds.

Method (continuous two-segment piecewise-linear regression, a.k.a. hinge or segmented regression):
    acc(s) = a + b * s + c * max(0, s - t)

For a fixed breakpoint `t` the model is linear in (a, b, c) and solved by least squares; `t` is chosen to
minimise the squared error over a fine grid strictly inside the measured sparsities, keeping at least
`min_side` points on each side (so both slopes are estimated from data; with 2 points per side the fit is
still determined). `t` is the sparsity where the slope changes most: left slope `b`, right slope `b + c`,
slope change `c` (negative when accuracy starts falling faster, as in "Essential Sparsity", Jaiswal et al. 2023).
A curve needs at least 4 distinct sparsities (2 * min_side).

Over seeds: each seed's curve is fitted on its own; the estimate is the fit of the seed-mean curve, the
interval is mean ± t_{0.975, n-1} * sd / sqrt(n) of the per-seed breakpoints (Student t, n = number of
seeds), clipped to the measured range; with one seed there is no interval (None).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nsa.errors import NSAError
from nsa.study.results import GRID_COLUMNS

GRID_POINTS = 400  # candidate breakpoints per fit (the curve's range / 400 resolution)


@dataclass
class BreakpointFit:
    """One curve's two-segment fit."""
    breakpoint: float  # sparsity where the slope changes
    slope_left: float  # accuracy per unit sparsity before the breakpoint
    slope_right: float  # ... after it
    intercept: float
    sse: float  # squared error of the two-segment fit
    sse_line: float  # squared error of a single straight line (how much the bend explains)
    n_points: int

    @property
    def slope_change(self) -> float:
        return self.slope_right - self.slope_left

    def predict(self, s: np.ndarray | float) -> np.ndarray:
        s = np.asarray(s, dtype=float)
        return self.intercept + self.slope_left * s + self.slope_change * np.maximum(0.0, s - self.breakpoint)

    def to_dict(self) -> dict:
        return {**asdict(self), "slope_change": self.slope_change}


@dataclass
class SeedBreakpoint:
    """A curve's breakpoint over seeds: the seed-mean curve's fit and the interval of the per-seed fits."""
    breakpoint: float
    ci95: tuple[float, float] | None
    per_seed: list[float]
    fit: BreakpointFit


def fit_breakpoint(sparsity, accuracy, min_side: int = 2) -> BreakpointFit:
    """Fit `accuracy = a + b*s + c*max(0, s - t)` (see the module docstring); points may repeat a sparsity."""
    s = np.asarray(sparsity, dtype=float).ravel()
    y = np.asarray(accuracy, dtype=float).ravel()
    if s.shape != y.shape:
        raise NSAError(f"sparsity and accuracy differ in length ({s.size} vs {y.size})")
    keep = np.isfinite(s) & np.isfinite(y)
    s, y = s[keep], y[keep]
    levels = np.unique(s)
    if levels.size < 2 * min_side:
        raise NSAError(f"a breakpoint needs at least {2 * min_side} distinct sparsities, got {levels.size} "
                       f"({', '.join(f'{v:g}' for v in levels)}); add sparsities to the study")
    lo, hi = levels[min_side - 1], levels[-min_side]  # t in [lo, hi] keeps >= min_side levels on each side
    best: tuple[float, np.ndarray, float] | None = None
    for t in np.linspace(lo, hi, GRID_POINTS):
        coef, sse = _hinge_lstsq(s, y, t)
        if best is None or sse < best[2] - 1e-15:
            best = (float(t), coef, sse)
    t, coef, sse = best
    line = np.polyfit(s, y, 1)
    sse_line = float(np.sum((np.polyval(line, s) - y) ** 2))
    return BreakpointFit(breakpoint=t, slope_left=float(coef[1]), slope_right=float(coef[1] + coef[2]),
                         intercept=float(coef[0]), sse=sse, sse_line=sse_line, n_points=int(s.size))


def fit_over_seeds(curves: dict[object, tuple[list[float], list[float]]], min_side: int = 2) -> SeedBreakpoint:
    """`curves`: seed -> (sparsities, accuracies). Estimate from the seed-mean curve, interval over seeds."""
    if not curves:
        raise NSAError("no curve to fit a breakpoint to")
    per_seed = [fit_breakpoint(s, y, min_side).breakpoint for s, y in curves.values()]
    all_s = np.concatenate([np.asarray(s, dtype=float) for s, _ in curves.values()])
    all_y = np.concatenate([np.asarray(y, dtype=float) for _, y in curves.values()])
    levels = np.unique(all_s)
    mean_y = np.array([all_y[all_s == v].mean() for v in levels])
    fit = fit_breakpoint(levels, mean_y, min_side)
    return SeedBreakpoint(breakpoint=fit.breakpoint, ci95=seed_interval(per_seed, (levels[0], levels[-1])),
                          per_seed=per_seed, fit=fit)


def seed_interval(values: list[float], clip: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """Student-t 95% interval of the mean of per-seed estimates (None for fewer than 2 seeds)."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t as student_t

    mean = float(np.mean(values))
    half = float(student_t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    lo, hi = mean - half, mean + half
    if clip is not None:
        lo, hi = max(lo, float(clip[0])), min(hi, float(clip[1]))
    return (lo, hi)


def _hinge_lstsq(s: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, float]:
    x = np.column_stack([np.ones_like(s), s, np.maximum(0.0, s - t)])  # [n, 3]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coef, float(np.sum((x @ coef - y) ** 2))


def table_breakpoints(table, value: str = "accuracy", min_side: int = 2):
    """One breakpoint per curve of a results table (`nsa.study.results`): a curve is every grid coordinate
    except sparsity and seed, per task; seeds give the interval. Curves with too few sparsities are skipped.

    Returns a DataFrame: the curve's coordinates, `breakpoint`, `ci_low`, `ci_high`, `n_seeds`, `slope_left`,
    `slope_right`, `slope_change`, `sse`, `sse_line`.
    """
    import pandas as pd


    keys = [c for c in GRID_COLUMNS if c not in ("sparsity", "seed") and c in table] + ["task"]
    rows = []
    if table.empty:
        return pd.DataFrame(columns=keys + ["breakpoint", "ci_low", "ci_high", "n_seeds"])
    # dropna=False: magnitude curves have no calibration source/nsamples (NaN keys stay NaN, so the table
    # keeps one dtype per column)
    grouped = table.assign(seed=table["seed"].fillna(-1)).groupby(keys, sort=False, dropna=False)
    for key, curve in grouped:
        if curve["sparsity"].nunique() < 2 * min_side:
            continue
        curves = {seed: (part["sparsity"].tolist(), part[value].tolist()) for seed, part in curve.groupby("seed")}
        curves = {k: v for k, v in curves.items() if len(set(v[0])) >= 2 * min_side}
        if not curves:
            continue
        result = fit_over_seeds(curves, min_side)
        ci = result.ci95 or (None, None)
        fit = result.fit
        rows.append({**dict(zip(keys, key)), "breakpoint": result.breakpoint, "ci_low": ci[0], "ci_high": ci[1],
                     "n_seeds": len(curves), "slope_left": fit.slope_left, "slope_right": fit.slope_right,
                     "slope_change": fit.slope_change, "sse": fit.sse, "sse_line": fit.sse_line})
    return pd.DataFrame(rows, columns=keys + ["breakpoint", "ci_low", "ci_high", "n_seeds", "slope_left",
                                              "slope_right", "slope_change", "sse", "sse_line"])
