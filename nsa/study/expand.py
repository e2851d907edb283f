"""Axes → job specs: the study's grid as normalised job specs with their run ids.

Every combination of axis values (first axis slowest) is written into a copy of the base spec and normalised
by the job system (`nsa.jobs.spec`), which validates it and gives the run id (a hash of the normalised spec).
Combinations that normalise to the same spec are one run (e.g. when the job system drops a setting a method
ignores). A run whose folder is complete (`nsa.jobs.runs.is_complete`) is finished and is reused, not recomputed.
The grid's size is known from the axes, so a grid too large to expand is refused before any spec is built.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

from nsa.errors import NSAError
from nsa.jobs.runs import is_complete
from nsa.jobs.spec import JobSpec, parse_spec
from nsa.study.spec import StudySpec

HARD_MAX_RUNS = 10_000  # beyond this a grid is refused even with --yes (expanding it alone takes minutes)


@dataclass
class StudyRun:
    """One grid point: its axis values, the normalised job spec and its run id."""
    coords: dict
    job: JobSpec
    also: list[dict] = field(default_factory=list)  # other grid points that normalised to the same spec

    @property
    def run_id(self) -> str:
        return self.job.id

    @property
    def spec(self) -> dict:
        return self.job.to_dict()

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


def expand(study: StudySpec, yes: bool = False) -> list[StudyRun]:
    """The study's distinct runs, in grid order; a bad combination raises `NSAError` naming it. The grid's
    size is checked first (`check_grid`)."""
    check_grid(study.size, study.max_runs, yes)
    evaluate = study.base.get("evaluate") if isinstance(study.base, dict) else None
    if not isinstance(evaluate, dict) or not evaluate.get("tasks"):
        raise NSAError(f"{study.path or study.name}: a study compares accuracy, so `base:` needs "
                       "`evaluate: {tasks: [...], limit: N}` (e.g. tasks: [demo-reviews])")
    runs: dict[str, StudyRun] = {}
    for coords, raw in grid_specs(study):
        job = normalise(raw, coords)
        if job.id in runs:
            runs[job.id].also.append(coords)
        else:
            runs[job.id] = StudyRun(coords=coords, job=job)
    return list(runs.values())


def check_grid(size: int, max_runs: int, yes: bool) -> None:
    """A grid larger than `max_runs` points runs only when confirmed (`--yes`); beyond `HARD_MAX_RUNS` never."""
    if size > HARD_MAX_RUNS:
        raise NSAError(f"this study's axes make {size:,} grid points, more than {HARD_MAX_RUNS:,}: split it into "
                       "smaller studies")
    if size > max_runs and not yes:
        raise NSAError(f"this study's axes make {size} grid points, more than the limit of {max_runs}; check the "
                       "axes (`--dry-run` lists the runs), then confirm with --yes or raise the limit with "
                       "--max-runs N (or `max_runs:` in the study file)")


def normalise(spec: dict, coords: dict | None = None) -> JobSpec:
    """The job system's normalised spec (errors name the grid point)."""
    try:
        return parse_spec(spec)
    except NSAError as err:
        where = f"run {', '.join(f'{k}={v}' for k, v in coords.items())}: " if coords else ""
        raise NSAError(f"{where}{err}") from None


def is_finished(run_id: str) -> bool:
    """A run is finished (reusable) when its folder is complete and verifies."""
    return is_complete(run_id)


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
