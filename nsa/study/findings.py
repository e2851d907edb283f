"""The paper's two findings (Ding et al. 2025, "Neuron Semantic Attribution", arXiv:2503.01542), as numbers from a
study's results table, each with a verdict sentence that says plainly whether it holds here.

1. "The calibration set matters": for each method and pair of calibration sources, the difference of the
   accuracy drop (source A − source B) over cells that match on everything else (sparsity, seed, task, ...),
   mean with a Student-t 95% interval over those cells.
2. "Sentiment suffers most": for each method, per run the mean drop on sentiment tasks minus the mean drop on
   the other tasks (same pruned model, so paired), mean with a Student-t 95% interval over runs.

Both return a DataFrame (with a `verdict` column); an empty one when the study lacks the contrast (one calibration
source; no non-sentiment task), with the reason in `DataFrame.attrs["note"]`.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from nsa.study.results import GRID_COLUMNS, with_method_labels


def calibration_effect(table: pd.DataFrame) -> pd.DataFrame:
    """Drop(source A) − drop(source B) per method, paired over the other grid coordinates and tasks."""
    cols = ["method", "source_a", "source_b", "mean_diff", "ci_low", "ci_high", "n_cells", "drop_a", "drop_b",
            "verdict"]
    table = with_method_labels(table)
    sources = sorted(table["source"].dropna().unique()) if not table.empty else []
    if len(sources) < 2:
        return _empty(cols, "the study has fewer than two calibration sources")
    match = [c for c in GRID_COLUMNS if c not in ("source", "method") and c in table] + ["task"]
    rows = []
    for method, part in table.groupby("method", sort=False):
        wide = part.pivot_table(index=[c for c in match if part[c].notna().any()], columns="source",
                                values="drop", aggfunc="mean")
        for a, b in itertools.combinations(sources, 2):
            if a not in wide or b not in wide:
                continue
            pair = wide[[a, b]].dropna()
            diff = (pair[a] - pair[b]).to_numpy()
            lo, hi = t_interval(diff)
            mean = float(diff.mean()) if diff.size else math.nan
            rows.append({"method": method, "source_a": a, "source_b": b, "mean_diff": mean, "ci_low": lo,
                         "ci_high": hi, "n_cells": int(diff.size), "drop_a": float(pair[a].mean()),
                         "drop_b": float(pair[b].mean()),
                         "verdict": _sentence(f"{method}: calibrating on {a} rather than {b}", mean, lo, hi,
                                              int(diff.size), "paired cells", "the calibration set matters here",
                                              "no difference is detectable here")})
    return pd.DataFrame(rows, columns=cols)


def group_effect(table: pd.DataFrame, focus: str = "sentiment", competent_only: bool = False) -> pd.DataFrame:
    """Per method: mean over runs of (mean drop on `focus` tasks − mean drop on the other tasks). With
    `competent_only`, only tasks the dense model does above chance (`dense_above_chance`) count: a task it does not
    do can "drop" by minus 50 points when pruning merely moves its label bias (BoolQ on SmolLM2)."""
    cols = ["method", "mean_diff", "ci_low", "ci_high", "n_runs", f"drop_{focus}", "drop_others", "other_groups",
            "verdict"]
    if competent_only and not table.empty:
        if "dense_above_chance" not in table:
            return _empty(cols, "the table does not say which tasks the dense model does above chance")
        table = table[table["dense_above_chance"].fillna(False).astype(bool)]
        if table.empty:
            return _empty(cols, "the dense model does no task above chance")
    if table.empty or not (table["group"] == focus).any():
        return _empty(cols, f"the study has no {focus} task")
    if not (table["group"] != focus).any():
        return _empty(cols, f"the study has only {focus} tasks: add a task of another group (e.g. inference, qa) "
                            "to compare")
    table = with_method_labels(table)
    flagged = table.assign(is_focus=table["group"] == focus)
    per_run = flagged.groupby(["method", "run_id", "is_focus"])["drop"].mean().unstack("is_focus").dropna()
    others = ", ".join(sorted(table.loc[table["group"] != focus, "group"].unique()))
    rows = []
    for method, part in per_run.groupby(level="method", sort=False):
        diff = (part[True] - part[False]).to_numpy()
        lo, hi = t_interval(diff)
        rows.append({"method": method, "mean_diff": float(diff.mean()), "ci_low": lo, "ci_high": hi,
                     "n_runs": int(diff.size), f"drop_{focus}": float(part[True].mean()),
                     "drop_others": float(part[False].mean()), "other_groups": others,
                     "verdict": _sentence(f"{method}: {focus} tasks compared with {others}", float(diff.mean()), lo,
                                          hi, int(diff.size), "runs", f"{focus} suffers more: the finding holds",
                                          "the finding does not hold here", positive_only=True)})
    return pd.DataFrame(rows, columns=cols)


def _sentence(what: str, mean: float, lo: float, hi: float, n: int, unit: str, holds: str, fails: str,
              positive_only: bool = False) -> str:
    """"<what>: the drop differs by +2.3 points, 95% interval [+0.4, +4.2] over 12 paired cells: <holds>", plainly
    either way. Drops are accuracy fractions (0.023); the sentence speaks in percentage points (2.3)."""
    if n == 0:
        return f"{what}: no {unit} to compare"
    if n < 2 or lo != lo:
        one = {"runs": "run", "paired cells": "paired cell"}.get(unit, unit) if n == 1 else unit
        return f"{what}: the drop differs by {100 * mean:+.1f} points over {n} {one}, too few for an interval"
    shown = (f"{what}: the drop differs by {100 * mean:+.1f} points, 95% interval [{100 * lo:+.1f}, "
             f"{100 * hi:+.1f}] over {n} {unit}")
    if lo > 0 or (hi < 0 and not positive_only):
        return f"{shown}: {holds}"
    if hi < 0:
        return f"{shown}: the opposite of the finding"
    return f"{shown}: the interval includes 0, {fails}"


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """Student-t 95% interval of the mean (nan when fewer than two values)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return (math.nan, math.nan)
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    mean = float(values.mean())
    return (mean - half, mean + half)


def _empty(columns: list[str], note: str) -> pd.DataFrame:
    frame = pd.DataFrame(columns=columns)
    frame.attrs["note"] = note
    return frame
