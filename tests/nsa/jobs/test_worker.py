"""The worker with real processes: progress to done, cancel, kill -9 and recovery, failures, corruption."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nsa.errors import NSAError
from nsa.jobs import runs
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa.jobs.worker import ensure_worker, job_threads, run_worker, usable_cores, worker_running
from tests.conftest import ROOT


def _nsa(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nsa", *args], cwd=ROOT, env=os.environ.copy(), text=True,
                          capture_output=True, timeout=timeout)


def _hidden(cache: Path) -> list[str]:
    folder = cache / "runs"
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def _status(store: JobStore, job_id: str, *wanted: str):
    job = store.get(job_id)
    return job if job.status in wanted else None


@pytest.mark.slow
def test_submit_progress_done_then_corrupted_artifact_is_recomputed(cache, spec, workers, wait,
                                                                   tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    out = _nsa("submit", str(spec_file), "--no-worker")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    store = JobStore()
    assert store.get(job_id).status == "queued"

    workers.start("--idle-exit", "1")
    seen = []

    def finished():
        job = store.get(job_id)
        if job.status == "running" and (job.stage, job.progress) not in seen:
            seen.append((job.stage, job.progress))
        return job if job.status in ("done", "failed", "cancelled") else None

    job = wait(finished, 120, "the job to finish", poll=0.05)
    assert job.status == "done", f"{job.error}\n{job.traceback}\n{workers.logs()}"
    assert job.progress == 1.0 and job.finished >= job.started >= job.created
    fractions = [f for _, f in seen]
    assert len(seen) >= 2 and fractions == sorted(fractions), seen  # progress moves forward while it runs
    folder = runs.run_dir(job_id)
    assert runs.verify_run(job_id) == []
    for rel in ("spec.json", "manifest.json", "masks.safetensors", "stats.json", "calibration.json",
                "neurons.parquet", "eval/dense/summary.json", "eval/dense/sst2.jsonl", "eval/pruned/summary.json",
                "eval/pruned/sst2.jsonl", "eval/comparison.json", "nsa/summary.json", "logs/job.log"):
        assert (folder / rel).is_file(), rel
    assert json.loads((folder / "spec.json").read_text())["prune"]["method"] == "wanda"
    assert json.loads((folder / "eval" / "comparison.json").read_text())["dense_dir"] == "eval/dense"
    assert _hidden(cache) == []
    log = (folder / "logs" / "job.log").read_text()
    for stage in ("load model", "calibration", "dense eval", "prune", "neurons", "pruned eval", "comparison", "nsa"):
        assert f"stage {stage}\n" in log, stage
    # progress lines are throttled (one per kind of message, or every 2 s): a readable log, not one line a batch
    prune_lines = [line for line in log.splitlines() if " prune " in line and "%" in line]
    assert 1 <= len(prune_lines) <= 5 and len(log.splitlines()) < 80
    listing = _nsa("jobs")
    assert job_id in listing.stdout and "done" in listing.stdout
    assert workers.procs[0].wait(60) == 0  # the idle worker exits by itself

    # a corrupted and a missing artifact: reported, then recomputed; the stages that still verify are reused
    manifest = runs.run_entry(job_id).manifest()["files"]
    (folder / "neurons.parquet").write_bytes(b"PAR1 truncated")
    (folder / "eval" / "pruned" / "sst2.jsonl").unlink()
    assert sorted(runs.verify_run(job_id)) == ["eval/pruned/sst2.jsonl: missing",
                                               "neurons.parquet: size 14 bytes, the manifest says " + str(manifest["neurons.parquet"]["size"])]
    listed = _nsa("runs", "--verify")
    assert "NO" in listed.stdout and "neurons.parquet: size 14 bytes" in listed.stdout
    again = _nsa("run", str(spec_file))
    assert again.returncode == 0, again.stderr
    assert runs.verify_run(job_id) == [] and store.get(job_id).status == "done"
    repaired = runs.run_entry(job_id).manifest()["files"]
    for rel in ("masks.safetensors", "nsa/summary.json", "eval/dense/sst2.jsonl", "neurons.parquet",
                "eval/pruned/sst2.jsonl"):
        assert repaired[rel] == manifest[rel], rel  # recomputed identically, or reused
    log = (folder / "logs" / "job.log").read_text()
    for stage in ("calibration", "dense eval", "prune"):
        assert f"stage {stage} reused" in log, stage
    for stage in ("neurons", "pruned eval", "comparison", "nsa dense", "nsa"):  # NSA reads the pruned records
        assert f"stage {stage}\n" in log, stage
    assert _nsa("run", str(spec_file)).stdout.strip().endswith(str(folder))  # complete: nothing recomputed


@pytest.mark.slow
def test_cancel_mid_job(cache, long_spec, quick_spec, workers, wait):
    store = JobStore()
    job_id = submit(long_spec, store, start_worker=False).run_id
    worker = workers.start()
    wait(lambda: (j := store.get(job_id)).status == "running" and j.stage == "prune" and j.progress > 0.1,
         120, "pruning to be under way")
    out = _nsa("cancel", job_id[:8])
    assert out.returncode == 0 and "cancel requested" in out.stdout, out.stderr
    job = wait(lambda: _status(store, job_id, "cancelled", "done", "failed"), 10, "the cancel (within seconds)")
    assert job.status == "cancelled" and "cancelled during prune" in job.message
    assert not runs.run_dir(job_id).exists() and _hidden(cache) == []
    assert worker.poll() is None  # the worker survives and takes the next job
    other = submit(quick_spec, store, start_worker=False).run_id
    assert wait(lambda: _status(store, other, "done", "failed"), 90, "the next job").status == "done"


@pytest.mark.slow
def test_kill_9_worker_mid_job_then_restart(cache, long_spec, quick_spec, workers, wait):
    store = JobStore()
    first = submit(long_spec, store, start_worker=False).run_id
    second = submit(quick_spec, store, start_worker=False).run_id
    worker = workers.start()
    wait(lambda: (j := store.get(first)).status == "running" and j.stage == "prune" and j.progress > 0.1,
         120, "pruning to be under way")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    time.sleep(1.0)
    job = store.get(first)
    assert job.status == "running" and not runs.run_dir(first).exists()  # a half run is never visible
    beat = job.heartbeat
    time.sleep(2.0)  # the job's own process died with its worker: no orphan keeps writing progress
    assert store.get(first).heartbeat == beat and store.get(first).progress == job.progress

    workers.start("--idle-exit", "1")
    done = wait(lambda: all(store.get(i).status in ("done", "failed") for i in (first, second)), 150,
                "both jobs after the restart")
    assert done
    job = store.get(first)
    assert job.status == "done" and job.attempts == 2, f"{job.error}\n{workers.logs()}"
    assert store.get(second).status == "done"
    assert runs.verify_run(first) == [] and runs.verify_run(second) == []
    assert _hidden(cache) == []
    assert "re-queued" not in job.message and "died" not in (job.error or "")


def test_job_that_raises_fails_with_its_message(cache, stories_dir, wait, tmp_path):
    store = JobStore()
    assert ensure_worker(store) is None  # nothing queued: no worker
    texts = tmp_path / "two_lines.txt"
    texts.write_text("a short calibration text\nanother one\n")
    bad = submit({"model": str(stories_dir), "prune": {"method": "wanda", "sparsity": 0.5},
                  "calibration": {"source": "mine", "path": str(texts), "nsamples": 2, "seqlen": 512}},
                 store, start_worker=False).run_id
    pid = ensure_worker(store, idle_exit_s=1)  # what the app does after submitting
    assert pid and wait(worker_running, 30, "the worker to take its lock")
    assert ensure_worker(store) is None  # one worker at a time
    job = wait(lambda: _status(store, bad, "done", "failed"), 90, "the job to fail")
    assert job.status == "failed" and "windows of seqlen=512" in job.error, job
    assert job.message.startswith("failed during calibration:") and "Traceback" in job.traceback
    assert not runs.run_dir(bad).exists() and _hidden(cache) == []
    shown = _nsa("jobs", "--show", bad[:6])
    assert "status: failed" in shown.stdout and "Traceback" in shown.stdout
    wait(lambda: not worker_running(), 30, "the idle worker to exit")
    assert "job " + bad + ": failed" in (cache / "logs" / "worker.log").read_text()


def test_job_threads_default_every_core_and_bad_values_refused(monkeypatch):
    """NSA_JOB_THREADS overrides a job's default thread count; a bad value is a sentence, not a crash."""
    monkeypatch.delenv("NSA_JOB_THREADS", raising=False)
    assert job_threads(2) == 2
    monkeypatch.setenv("NSA_JOB_THREADS", " 1 ")
    assert job_threads(2) == 1
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("NSA_JOB_THREADS", bad)
        with pytest.raises(NSAError, match="NSA_JOB_THREADS=.*positive whole number"):
            job_threads(2)
        with pytest.raises(NSAError, match="positive whole number"):
            run_worker(once=True)  # refused before the store is opened or a job claimed


def test_a_job_uses_every_usable_core_unless_told_otherwise(cache, quick_spec, monkeypatch):
    """With NSA_JOB_THREADS unset, the worker's job process runs torch on every core this process may use (what
    makes the app's default SmolLM2 job finish in under 5 minutes on 2 cores); stats.json records the count."""
    monkeypatch.delenv("NSA_JOB_THREADS", raising=False)
    store = JobStore()
    job_id = submit(quick_spec, store, start_worker=False).run_id
    assert run_worker(store, once=True, log=lambda line: None) == 1
    assert store.get(job_id).status == "done"
    stats = json.loads((runs.run_dir(job_id) / "stats.json").read_text())
    assert stats["versions"]["torch_threads"] == usable_cores() == len(os.sched_getaffinity(0))
