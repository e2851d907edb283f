"""Axes → job specs: counts, order, merging of identical specs, the run limit, bad grid points."""
from __future__ import annotations

import time

import pytest

from nsa.errors import NSAError
from nsa.jobs.spec import parse_spec
from nsa.study.expand import check_grid, expand, grid_specs, set_path
from nsa.study.spec import load_study, parse_study
from tests.conftest import ROOT

BASE = """\
base:
  model: demo
  prune: {method: wanda, sparsity: 0.5}
  calibration: {source: demo-generic, nsamples: 4, seqlen: 32, seed: 0}
  evaluate: {tasks: [demo-reviews], limit: 10}
"""


def test_grid_order_and_values_reach_the_spec():
    study = parse_study(BASE + "axes:\n  source: [demo-generic, demo-reviews]\n  sparsity: [0.3, 0.6]\n"
                               "  nsamples: [4, 8]\n")
    runs = expand(study)
    assert len(runs) == study.size == 8
    first, last = runs[0], runs[-1]
    assert first.coords == {"source": "demo-generic", "sparsity": 0.3, "nsamples": 4}  # first axis slowest
    assert last.spec["calibration"]["source"] == "demo-reviews" and last.spec["prune"]["sparsity"] == 0.6
    assert last.spec["calibration"]["nsamples"] == 8
    assert len({r.run_id for r in runs}) == 8
    for run in runs:  # the run id is the job system's own id for that spec
        assert parse_spec(run.spec).id == run.run_id


def test_demo_study_merges_magnitude_runs_that_read_no_calibration():
    study = load_study(ROOT / "studies" / "demo.yaml")
    runs = expand(study)
    assert study.size == 3 * 2 * 6 * 3
    magnitude = [r for r in runs if r.spec["prune"]["method"] == "magnitude"]
    assert len(magnitude) == 6  # one per sparsity: calibration source and seed do not change the run
    assert all(len(r.also) == 5 for r in magnitude)
    assert len(runs) == 6 + 2 * (2 * 6 * 3)


def test_bad_grid_point_is_named():
    study = parse_study(BASE + "axes:\n  method: [wanda, nosuchpruner]\n")
    with pytest.raises(NSAError, match="run method=nosuchpruner: prune.method"):
        expand(study)
    study = parse_study(BASE + "axes:\n  sparsity: [0.5, 1.5]\n")
    with pytest.raises(NSAError, match=r"run sparsity=1.5: prune.sparsity: must be in \[0, 1\)"):
        expand(study)
    study = parse_study(BASE + "axes:\n  prune.options.nosuchoption: [1]\n")
    with pytest.raises(NSAError, match="prune.options.nosuchoption"):
        expand(study)


def test_study_without_tasks_is_refused():
    study = parse_study("base: {model: demo, prune: {method: wanda}}\naxes: {sparsity: [0.5]}\n")
    with pytest.raises(NSAError, match="needs `evaluate: "):
        expand(study)


def test_run_limit_needs_confirmation():
    study = parse_study(BASE + "max_runs: 3\naxes:\n  sparsity: [0.2, 0.3, 0.4, 0.5]\n")
    with pytest.raises(NSAError, match="4 grid points, more than the limit of 3.*--yes"):
        expand(study)
    assert len(expand(study, yes=True)) == 4
    check_grid(4, 4, yes=False)


def test_a_huge_grid_is_refused_before_it_is_expanded():
    """100 x 100 x 100 points used to run 90 s and grow to 1.4 GB before any output."""
    axes = "axes:\n" + "".join(f"  {a}: [{', '.join(str(i) for i in range(100))}]\n"
                                for a in ("seed", "nsamples", "seqlen"))
    study = parse_study(BASE + axes)
    start = time.perf_counter()
    with pytest.raises(NSAError, match="1,000,000 grid points, more than 10,000"):
        expand(study, yes=True)
    study = parse_study(BASE + "axes:\n" + "".join(f"  {a}: [{', '.join(str(i) for i in range(20))}]\n"
                                                   for a in ("seed", "nsamples")))
    with pytest.raises(NSAError, match="400 grid points, more than the limit of 200.*--yes"):
        expand(study)
    assert time.perf_counter() - start < 1.0


def test_set_path_creates_sections_and_refuses_scalars():
    spec = {"prune": {"method": "wanda"}}
    set_path(spec, ("prune", "options", "alpha"), 2.0)
    assert spec == {"prune": {"method": "wanda", "options": {"alpha": 2.0}}}
    with pytest.raises(NSAError, match="base spec's prune.method is 'wanda', not a mapping"):
        set_path(spec, ("prune", "method", "x"), 1, "prune.method.x")
    assert len(grid_specs(parse_study(BASE + "axes: {seed: [1, 2]}\n"))) == 2
