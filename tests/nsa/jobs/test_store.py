"""The SQLite job store through the one submit path: idempotent (also from two processes at once), cancel,
resubmit, claim."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from nsa.errors import NSAError
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from tests.conftest import ROOT

SUBMIT_AT = """
import json, sys, time
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
spec, at = json.loads(sys.argv[1]), float(sys.argv[2])
store = JobStore()
time.sleep(max(0.0, at - time.time()))
print(submit(spec, store, start_worker=False).run_id)
"""


def test_two_processes_submitting_the_same_spec_make_one_job(cache, spec, tmp_path):
    at = time.time() + 2.0  # both processes are past their imports by then and submit in the same instant
    procs = [subprocess.Popen([sys.executable, "-c", SUBMIT_AT, json.dumps(spec), str(at)], cwd=ROOT,
                              env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = {out.strip() for out, _ in outs}
    assert len(ids) == 1
    store = JobStore()
    jobs = store.list()
    assert [j.id for j in jobs] == list(ids) and jobs[0].status == "queued"
    with sqlite3.connect(cache / "jobs.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_submit_cancel_resubmit_and_claim(cache, spec):
    store = JobStore()
    job_id = submit(spec, store, start_worker=False).run_id
    assert submit(dict(spec), store, start_worker=False).run_id == job_id and len(store.list()) == 1
    job = store.get(job_id)
    assert job.status == "queued" and job.progress == 0 and job.spec["prune"]["method"] == "wanda"
    assert job.get("status") == "queued" and store.require(job_id[:6]).id == job_id
    assert store.cancel(job_id).status == "cancelled"
    assert submit(spec, store, start_worker=False).run_id == job_id and store.get(job_id).status == "queued"  # cancelled -> queued again
    claimed = store.claim_next(worker_pid=os.getpid())
    assert claimed.id == job_id and claimed.status == "running" and claimed.attempts == 1
    assert store.claim_next(worker_pid=os.getpid()) is None
    store.update(job_id, stage="prune", progress=0.25, message="layer 1/5")
    job = store.get(job_id)
    assert (job.stage, job.progress, job.message) == ("prune", 0.25, "layer 1/5") and job.heartbeat
    assert store.cancel(job_id).cancel_requested  # a running job is stopped by its worker
    store.finish(job_id, "failed", message="boom", error="boom", traceback="Traceback ...")
    job = store.get(job_id)
    assert job.status == "failed" and job.error == "boom" and job.finished >= job.started
    assert submit(spec, store, start_worker=False).run_id == job_id and store.get(job_id).status == "queued"  # failed -> queued again
    store.claim_next(worker_pid=os.getpid())
    store.finish(job_id, "done", message="ok")
    assert store.get(job_id).progress == 1.0
    assert submit(spec, store, start_worker=False).run_id == job_id and store.get(job_id).status == "queued"  # done, but no run folder
    with pytest.raises(NSAError, match="no job with id"):
        store.require("zzzz")
    with pytest.raises(NSAError, match="prune.sparsity"):
        submit({**spec, "prune": {"method": "wanda", "sparsity": 2}}, store, start_worker=False).run_id


HAMMER = """
import os, sys, time
from nsa.jobs.store import JobStore
store, errors, end = JobStore(), [], time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        store.worker_beat(os.getpid())
        store.list("running")
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}")
print(len(errors), sorted(set(errors))[:3])
"""


def test_deleting_the_store_files_again_and_again_never_fails_a_call(cache):
    """`rm jobs.sqlite*` under processes that use the store: SQLite answers "disk I/O error" or "no such table" in
    the instant the files go (before the store retried, 2 processes x 20 s saw ~20 such errors each, one of which
    crashed a worker mid-job); every call now succeeds on a recreated store."""
    JobStore()
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, "8"], cwd=ROOT, env=os.environ.copy(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(2.0)  # past their imports
    deletions = 0
    while any(p.poll() is None for p in procs):
        for suffix in ("", "-wal", "-shm"):
            (cache / f"jobs.sqlite{suffix}").unlink(missing_ok=True)
        JobStore().list("running")  # another process recreates the file at once, as the app or a submit would
        deletions += 1
        time.sleep(0.05)
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [out.split()[0] for out, _ in outs] == ["0", "0"], outs
    assert deletions > 50
