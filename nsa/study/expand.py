"""Axes → job specs: the study's grid as normalised job specs with their run ids.

Every combination of axis values (first axis slowest) is written into a copy of the base spec and normalised
by the job system (`nsa.jobs.spec`), which validates it and gives the run id (a hash of the normalised spec).
Combinations that normalise to the same spec are one run (e.g. when the job system drops a setting a method
ignores). A run whose folder already holds its comparison is finished and is reused, not recomputed.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from nsa.errors import NSAError
from nsa.study.spec import StudySpec


@dataclass
class StudyRun:
    """One grid point: its axis values, the normalised job spec and its run id."""

    coords: dict
    spec: dict
    run_id: str
    also: list[dict] = field(default_factory=list)  # other grid points that normalised to the same spec

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.coords.items())


def grid_specs(study: StudySpec) -> list[tuple[dict, dict]]:
    """(coords, raw spec) for every combination of axis values, before normalisation."""
    names = list(study.axes)
    out = []
    for combo in itertools.product(*(study.axes[n] for n in names)):
        spec = copy.deepcopy(study.base)
        coords = dict(zip(names, combo))
        for name, value in coords.items():
            set_path(spec, study.axis_paths[name], value, name)
        out.append((coords, spec))
    return out


def expand(study: StudySpec) -> list[StudyRun]:
    """The study's distinct runs, in grid order; a bad combination raises `NSAError` naming it."""
    evaluate = study.base.get("evaluate") if isinstance(study.base, dict) else None
    if not isinstance(evaluate, dict) or not evaluate.get("tasks"):
        raise NSAError(f"{study.path or study.name}: a study compares accuracy, so `base:` needs "
                       "`evaluate: {tasks: [...], limit: N}` (e.g. tasks: [demo-reviews])")
    runs: dict[str, StudyRun] = {}
    for coords, raw in grid_specs(study):
        spec, run_id = normalise(raw, coords)
        if run_id in runs:
            runs[run_id].also.append(coords)
        else:
            runs[run_id] = StudyRun(coords=coords, spec=spec, run_id=run_id)
    return list(runs.values())


def check_size(runs: list[StudyRun], max_runs: int, yes: bool) -> None:
    """A grid larger than `max_runs` runs only when confirmed (`--yes`)."""
    if len(runs) > max_runs and not yes:
        raise NSAError(f"this study expands to {len(runs)} runs, more than the limit of {max_runs}; check the "
                       "axes (`--dry-run` lists the runs), then confirm with --yes or raise the limit with "
                       "--max-runs N (or `max_runs:` in the study file)")


def normalise(spec: dict, coords: dict | None = None) -> tuple[dict, str]:
    """The job system's normalised form of `spec` and its run id (errors name the grid point)."""
    from nsa.jobs import spec as job_spec

    try:
        job = job_spec.parse_spec(spec)
    except NSAError as err:
        where = f"run {', '.join(f'{k}={v}' for k, v in coords.items())}: " if coords else ""
        raise NSAError(f"{where}{err}") from None
    return job.to_dict(), job.id


def run_folder(run_id: str) -> Path:
    from nsa.jobs.runs import run_dir

    return Path(run_dir(run_id))


def is_finished(run_id: str) -> bool:
    """A run is finished (reusable) when its comparison has been written (artifacts are renamed into place)."""
    return (run_folder(run_id) / "eval" / "comparison.json").is_file()


def set_path(spec: dict, path: tuple[str, ...], value, axis: str = "") -> None:
    """spec[path[0]]...[path[-1]] = value, creating missing mappings."""
    node = spec
    for i, key in enumerate(path[:-1]):
        child = node.setdefault(key, {})
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise NSAError(f"axis {axis or '.'.join(path)!r} sets {'.'.join(path)}, but the base spec's "
                           f"{'.'.join(path[:i + 1])} is {child!r}, not a mapping")
        node = child
    node[path[-1]] = value
