"""Recovery from dead workers (real processes that exited) and stale heartbeats; the worker lock."""
from __future__ import annotations

import json
import os
import signal
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


@pytest.mark.slow
def test_deleting_the_store_under_a_running_worker_loses_nothing(cache, long_spec, workers, wait):
    """jobs.sqlite removed while a job runs used to crash the worker (`no such table: workers`) and lose the job:
    the worker recreates the store, re-registers the job it runs, and finishes it."""
    store = JobStore()
    job_id = submit(long_spec, store, start_worker=False).run_id
    worker = workers.start("--idle-exit", "2")
    wait(lambda: (j := store.get(job_id)) is not None and j.status == "running" and j.stage == "prune", 120,
         "pruning to be under way")
    for suffix in ("", "-wal", "-shm"):
        (cache / f"jobs.sqlite{suffix}").unlink(missing_ok=True)
    try:
        job = wait(lambda: _status(JobStore(), job_id, "done", "failed", "cancelled"), 240, "the job to finish")
    except AssertionError as err:  # say what the worker did (it used to die of "disk I/O error" here)
        raise AssertionError(f"{err}; worker exit code {worker.poll()}; its log:\n{workers.logs()}") from None
    assert job.status == "done", workers.logs()
    assert runs.verify_run(job_id) == []
    assert worker.wait(60) == 0, workers.logs()  # the worker ran on and exited when idle


def _status(store, job_id, *wanted):
    job = store.get(job_id)
    return job if job is not None and job.status in wanted else None


SUBMIT_AND_START = """
import json, sys, time
from nsa.jobs.submit import submit
spec, at = json.loads(sys.argv[1]), float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
print(json.dumps(submit(spec).worker_pid))
"""


@pytest.mark.slow
def test_twenty_concurrent_submits_start_one_worker(cache, quick_spec):
    """Under load 20 submits used to start 5 background workers, 4 of which died on the lock."""
    at = time.time() + 6.0  # every process is past its imports by then
    specs = [dict(quick_spec, prune={"method": "magnitude", "sparsity": round(0.3 + 0.01 * i, 2)}) for i in range(20)]
    procs = [subprocess.Popen([sys.executable, "-c", SUBMIT_AND_START, json.dumps(s), str(at)], cwd=ROOT,
                              env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in specs]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs if err][:2]
    started = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len([pid for pid in started if pid]) == 1, started
    store = JobStore()
    assert len(store.list()) == 20
    for job in store.list("queued"):  # the one worker would run them all; the point here is how many started
        store.cancel(job.id)


@pytest.mark.slow
def test_a_second_run_after_kill_9_recovers_instead_of_following_a_dead_process(cache, long_spec, tmp_path, wait):
    """After `nsa run` was killed with -9, a second `nsa run` of the same spec used to follow the dead process for
    good: it now recovers the stale job and runs it."""
    spec_file = tmp_path / "long.yaml"
    spec_file.write_text(json.dumps(long_spec))
    first = subprocess.Popen([sys.executable, "-m", "nsa", "run", str(spec_file)], cwd=ROOT, env=os.environ.copy(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = JobStore()
    wait(lambda: any(j.status == "running" and j.stage == "prune" for j in store.list()), 120, "the first run")
    first.send_signal(signal.SIGKILL)
    first.wait()
    start = time.time()
    second = subprocess.run([sys.executable, "-m", "nsa", "run", str(spec_file)], cwd=ROOT, env=os.environ.copy(),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and "done ->" in second.stdout, second.stderr[-2000:]
    assert time.time() - start < 240
    assert [j.status for j in store.list()] == ["done"]
