"""A study's results as one table: one row per run × task, read from the run folders.

Each row: the run's grid coordinates (model, method, pattern, sparsity, source, nsamples, seqlen, seed), the
task and its group, and from `eval/comparison.json` (`nsa.evaluation.compare`) the dense accuracy, the
pruned accuracy and the drop (dense − pruned, on the same examples) with its paired 95% interval; from
`eval/pruned/summary.json` the pruned accuracy's Wilson 95% interval. Perplexity tasks have no accuracy and
are left out. Unfinished runs have no rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from nsa.atomic import write_text
from nsa.datasets import get_task
from nsa.errors import NSAError
from nsa.validation import binomial_tail

GRID_COLUMNS = ["model", "method", "pattern", "profile", "sparsity", "source", "nsamples", "seqlen", "seed"]
COLUMNS = ["run_id", *GRID_COLUMNS, "task", "group", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
           "dense_accuracy", "dense_chance", "dense_above_chance", "drop", "drop_ci_low", "drop_ci_high"]


def run_coordinates(spec: dict) -> dict:
    """A normalised job spec's grid coordinates (the columns every row of that run carries)."""
    prune = spec.get("prune") or {}
    calib = spec.get("calibration") or {}
    return {"model": spec.get("model"), "method": prune.get("method"), "pattern": prune.get("pattern"),
            "profile": prune.get("sparsity_profile") or "uniform",  # OWL and uniform runs never share a row key
            "sparsity": prune.get("sparsity"), "source": calib.get("source"), "nsamples": calib.get("nsamples"),
            "seqlen": calib.get("seqlen"), "seed": calib.get("seed")}


def run_rows(run_dir: str | Path) -> list[dict]:
    """The rows of one finished run (empty when its comparison is not written yet)."""
    run_dir = Path(run_dir)
    comparison = run_dir / "eval" / "comparison.json"
    if not comparison.is_file():
        return []
    spec = _read_json(run_dir / "spec.json")
    comp = _read_json(comparison)
    pruned_path = run_dir / "eval" / "pruned" / "summary.json"
    pruned = _read_json(pruned_path).get("tasks", {}) if pruned_path.is_file() else {}
    dense_path = run_dir / "eval" / "dense" / "summary.json"
    dense = _read_json(dense_path).get("tasks", {}) if dense_path.is_file() else {}
    coords = run_coordinates(spec)
    rows = []
    for task, entry in comp.get("tasks", {}).items():
        if entry.get("kind") == "perplexity":
            continue
        ci = entry.get("drop_ci95") or [None, None]
        acc_ci = (pruned.get(task) or {}).get("acc_ci95") or [None, None]
        rows.append({"run_id": run_dir.name, **coords, "task": task, "group": _group(task, pruned.get(task)),
                     "n": entry.get("n"), "accuracy": entry.get("pruned_acc"), "accuracy_ci_low": acc_ci[0],
                     "accuracy_ci_high": acc_ci[1], "dense_accuracy": entry.get("dense_acc"),
                     **_competence(entry.get("dense_acc"), entry.get("n"), (dense.get(task) or {}).get("majority_baseline")),
                     "drop": entry.get("drop"), "drop_ci_low": ci[0], "drop_ci_high": ci[1]})
    return rows


def results_table(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """One row per (finished run, accuracy task), sorted by the grid coordinates."""
    rows = [row for d in run_dirs for row in run_rows(d)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        return table
    for col in ("sparsity", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "dense_accuracy", "dense_chance", "drop",
                "drop_ci_low", "drop_ci_high"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    order = [c for c in ["model", "method", "profile", "source", "pattern", "nsamples", "seqlen", "sparsity", "seed", "task"]
             if table[c].notna().any()]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def with_method_labels(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `method` naming the sparsity profile too ("wanda · owl"), so every curve, finding and figure
    that groups by method keeps OWL runs apart from uniform ones; uniform runs keep the bare method name."""
    if table.empty or "profile" not in table:
        return table
    profile = table["profile"].fillna("uniform")
    label = table["method"].where(profile == "uniform", table["method"] + " · " + profile)
    return table.assign(method=label)


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV (atomically); returns the path."""
    path = Path(path)
    write_text(path, table.to_csv(index=False))
    return path


def _competence(acc: float | None, n: int | None, chance: float | None) -> dict:
    """Does the dense model do this task? Its accuracy against the best constant guess (the majority label's, or
    the most frequent gold choice's, share of these examples), one-sided exact binomial test at 0.05: the test
    `nsa.validation.above_chance` applies to NSA's task. A drop on a task the dense model does not do is noise."""
    if acc is None or not n or chance is None:
        return {"dense_chance": chance, "dense_above_chance": None}
    p = binomial_tail(int(round(acc * n)), int(n), float(chance))
    return {"dense_chance": chance, "dense_above_chance": bool(p < 0.05)}


def _group(task: str, entry: dict | None) -> str:
    if entry and entry.get("group"):
        return str(entry["group"])
    try:
        return get_task(task).group
    except NSAError:
        return "custom"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NSAError(f"{path} is missing: the run folder {path.parent} is incomplete "
                       "(re-run the study to recompute it)") from None
    except json.JSONDecodeError as err:
        raise NSAError(f"{path} is not valid JSON ({err}); delete the run (`python -m nsa runs --delete "
                       f"{path.parent.name}`) and re-run the study") from None
