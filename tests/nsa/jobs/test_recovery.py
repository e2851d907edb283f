"""Recovery from dead workers (real processes that exited) and stale heartbeats; the worker lock."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from nsa.errors import NSAError
from nsa.jobs import runs, worker
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa.jobs.worker import MAX_ATTEMPTS, recover, run_in_process, worker_lock, worker_running
from tests.conftest import ROOT


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_job_of_a_dead_worker_is_requeued_once_then_failed(cache, spec):
    store = JobStore()
    job_id = submit(spec, store, start_worker=False).run_id
    partial = runs.runs_dir() / f".{job_id}.abc.tmp"  # what a killed job leaves behind
    for attempt in range(1, MAX_ATTEMPTS + 1):
        pid = _dead_pid()
        store.worker_beat(pid, None)
        assert store.claim_next(pid).attempts == attempt
        store.update(job_id, stage="prune", progress=0.3, message="layer 2/5")
        partial.mkdir(parents=True)
        assert recover(store) == [job_id]
        assert not partial.exists()
    job = store.get(job_id)
    assert job.status == "failed" and "died" in job.error and "prune" in job.error
    assert "twice" in job.message


def test_stale_heartbeat_of_a_live_worker_is_recovered(cache, spec):
    store = JobStore()
    job_id = submit(spec, store, start_worker=False).run_id
    store.claim_next(os.getpid())  # alive, but silent
    assert recover(store, stale_s=60) == []  # a live worker with a fresh heartbeat keeps its job
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE jobs SET heartbeat=? WHERE id=?", (time.time() - 120, job_id))
    assert recover(store, stale_s=60) == [job_id]
    job = store.get(job_id)
    assert job.status == "queued" and "stopped beating" in job.message


def test_one_worker_holds_the_lock(cache):
    assert not worker_running()
    with worker_lock():
        assert worker_running()
        with pytest.raises(NSAError, match="another worker is already running"):
            with worker_lock():
                pass
    assert not worker_running()


def test_worker_exits_cleanly_on_sigterm_and_when_idle(cache, wait):
    root = ROOT
    worker = subprocess.Popen([sys.executable, "-m", "nsa", "worker"], cwd=root, env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait(worker_running, 30, "the worker to take its lock")
    worker.terminate()
    out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0 and "exiting after 0 job(s)" in out, out
    assert not worker_running() and JobStore().workers() == []
    proc = subprocess.run([sys.executable, "-m", "nsa", "worker", "--idle-exit", "0.5"], cwd=root,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "exiting after 0 job(s)" in proc.stdout, proc.stderr
    assert JobStore().workers() == []  # it unregistered itself


def _allocate_too_much() -> None:
    import torch

    torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses for real


def _cuda_oom() -> None:
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("make_error, says", [(_allocate_too_much, "out of host memory"),
                                              (_cuda_oom, "GPU out of memory")])
def test_out_of_memory_fails_the_job_with_what_to_lower(cache, spec, monkeypatch, make_error, says):
    """A real allocator refusal on the CPU (and torch's CUDA OOM error, which needs a GPU to happen for real)
    fails the job with a message naming the settings to lower, not a bare traceback."""
    def stage_that_runs_out(*args, **kwargs):
        make_error()

    monkeypatch.setattr(worker, "run_job", stage_that_runs_out)
    store = JobStore()
    job_id = submit(spec, store, start_worker=False).run_id
    job = store.claim_next(os.getpid())
    assert job is not None and job.id == job_id
    assert run_in_process(store, job, child=False) == "failed"
    done = store.get(job_id)
    assert done.status == "failed" and says in done.message and "calibration.nsamples" in done.message
