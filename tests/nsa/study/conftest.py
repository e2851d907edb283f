"""A tiny real study: 2 runs of the real pipeline (stories260K, Wanda at two sparsities, sst2 + rte)."""
from __future__ import annotations

import os

import pytest

TINY_STUDY = """\
name: tiny
base:
  model: {model}
  prune: {{method: wanda, sparsity: 0.5, pattern: unstructured}}
  calibration: {{source: sst2, nsamples: 4, seqlen: 32, seed: 0}}
  evaluate: {{tasks: [sst2, rte], limit: 12}}
axes:
  sparsity: [0.3, 0.7]
"""


@pytest.fixture(scope="session")
def study_cache(tmp_path_factory):
    """The session's private cache (the same folder tests/conftest.py gives every test)."""
    cache = tmp_path_factory.getbasetemp() / "nsa-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSA_CACHE_DIR", str(cache))  # session fixtures run before the per-test cache fixture
        yield cache


@pytest.fixture(scope="session")
def tiny_study(study_cache, stories_dir, tmp_path_factory):
    """(study file, plan) after running both runs through the real job pipeline, in this process."""
    import torch

    from nsa.jobs.pipeline import run_job
    from nsa.study import load_study, runner

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("study") / "tiny.yaml"
    path.write_text(TINY_STUDY.format(model=stories_dir))
    study = load_study(path)
    plan = runner.plan(study)
    assert len(plan.runs) == 2 and not plan.finished
    for run in plan.runs:
        run_job(run.spec)
    return path, runner.plan(load_study(path))
