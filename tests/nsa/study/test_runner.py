"""Queue side of a study with the real job store (no worker): submit, progress, stop, resume."""
from __future__ import annotations

import os

from nsa.jobs.store import JobStore
from nsa.study import parse_study, runner

STUDY = """\
name: queue-test
base:
  model: demo
  prune: {method: wanda, sparsity: 0.5}
  calibration: {source: demo-generic, nsamples: 4, seqlen: 32, seed: 0}
  evaluate: {tasks: [demo-reviews], limit: 10}
axes:
  sparsity: [0.2, 0.4, 0.6]
"""


def test_submit_progress_stop_and_resume(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    plan = runner.plan(parse_study(STUDY))
    state = runner.progress(plan, store)
    assert (state.total, state.missing, state.active) == (3, 3, 0)
    ids = runner.submit(plan, store)
    assert ids == plan.ids and runner.submit(plan, store) == ids  # submitting twice is the same jobs
    assert len(store.list()) == 3
    state = runner.progress(plan, store)
    assert (state.queued, state.done, state.fraction) == (3, 0, 0.0)
    # one job is taken by a worker and reports progress; the study's fraction counts it
    store.claim(ids[0], os.getpid())  # a live worker (a dead pid would be recovered)
    store.update(ids[0], stage="prune", progress=0.5, message="layer 2/4")
    state = runner.progress(plan, store)
    assert (state.running, state.queued) == (1, 2) and abs(state.fraction - 0.5 / 3) < 1e-9
    assert "sparsity=0.2" in state.current and "prune" in state.current
    # a failure is reported with its grid point
    store.finish(ids[0], "failed", message="failed during prune: boom", error="boom")
    state = runner.progress(plan, store)
    assert state.failed == 1 and state.failures[ids[0]] == "sparsity=0.2: boom"
    # stop: the unfinished ones are cancelled; resume: submitting again queues them again
    assert runner.stop(plan, store) == 2
    assert runner.progress(plan, store).cancelled == 2
    runner.submit(runner.plan(parse_study(STUDY)), store)
    assert runner.progress(plan, store).queued == 3


def test_plan_summary_mentions_merged_points():
    text = STUDY.replace("wanda", "magnitude").replace("sparsity: [0.2, 0.4, 0.6]", "seed: [0, 1]")
    plan = runner.plan(parse_study(text))
    assert len(plan.runs) == 1
    assert runner.plan_summary(plan) == ("study queue-test: 1 runs (2 grid points, 1 identical to another); "
                                         "0 finished (reused), 1 to run")
