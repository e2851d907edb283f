"""Run a study through the shared job queue: plan (what is finished), submit, follow, stop.

The study adds nothing to the job system: each run is an ordinary job (`nsa.jobs.store.JobStore`), run by the
ordinary worker, so the app's queue shows it and a run shared with another study or a single launch is done
once. Stopping cancels the study's unfinished jobs; running the study again submits only what is missing.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from nsa.errors import NSAError
from nsa.jobs.executors import Executor, LocalExecutor
from nsa.jobs.executors import start_worker as start_executor_worker
from nsa.jobs.runs import run_dir
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit as submit_one
from nsa.jobs.worker import BEAT_S, recover, run_in_process, worker_alive
from nsa.study.expand import StudyRun, expand, is_finished
from nsa.study.results import results_table
from nsa.study.spec import StudySpec

ACTIVE = ("queued", "running")


@dataclass
class StudyPlan:
    """A study's distinct runs and which of them are finished (reused, not recomputed)."""
    study: StudySpec
    runs: list[StudyRun]
    finished: set[str]

    @property
    def to_run(self) -> list[StudyRun]:
        return [r for r in self.runs if r.run_id not in self.finished]

    @property
    def ids(self) -> list[str]:
        return [r.run_id for r in self.runs]


@dataclass
class StudyProgress:
    """Where a study's runs stand in the queue. `partial` = summed progress fractions of running jobs."""
    total: int
    done: int = 0
    running: int = 0
    queued: int = 0
    failed: int = 0
    cancelled: int = 0
    missing: int = 0  # neither finished nor in the queue (not submitted yet, or its job was deleted)
    partial: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    current: str = ""

    @property
    def active(self) -> int:
        return self.running + self.queued

    @property
    def fraction(self) -> float:
        return (self.done + self.partial) / self.total if self.total else 1.0

    def short(self) -> str:
        parts = [f"{self.running} running", f"{self.queued} queued"]
        parts += [f"{n} {k}" for k, n in (("failed", self.failed), ("cancelled", self.cancelled)) if n]
        return ", ".join(parts) + (f" | {self.current}" if self.current else "")

    def summary(self) -> str:
        parts = [f"{self.done} of {self.total} runs finished"]
        parts += [f"{n} {k}" for k, n in (("running", self.running), ("queued", self.queued), ("failed", self.failed),
                                           ("cancelled", self.cancelled), ("not submitted", self.missing)) if n]
        return ", ".join(parts)


def plan(study: StudySpec, yes: bool = False) -> StudyPlan:
    """Expand the study (its grid size checked first) and look up which runs already have their results."""
    runs = expand(study, yes=yes)
    return StudyPlan(study=study, runs=runs, finished={r.run_id for r in runs if is_finished(r.run_id)})


def plan_summary(p: StudyPlan) -> str:
    merged = p.study.size - len(p.runs)
    extra = f" ({p.study.size} grid points, {merged} identical to another)" if merged else ""
    return (f"study {p.study.name}: {len(p.runs)} runs{extra}; {len(p.finished)} finished (reused), "
            f"{len(p.to_run)} to run")


def submit(p: StudyPlan, store=None, start_worker: bool = True, executor: Executor | None = None) -> list[str]:
    """Queue every unfinished run through the one submit path (a run already queued, running or complete is
    not submitted twice), then start one worker using `executor` (default: the local one); returns their ids."""
    store = store or _store()
    ids = [submit_one(run.job, store, start_worker=False, executor=executor).run_id for run in p.to_run]
    if start_worker:
        start_executor_worker(store, executor or LocalExecutor())
    return ids


def stalled(state: StudyProgress) -> bool:
    """Runs wait in the queue, none runs, and no worker is running or starting: nothing will run them (the
    worker stopped, e.g. its Ray cluster went away) until a worker starts again."""
    return state.queued > 0 and state.running == 0 and not worker_alive()


def waiting_reasons(p: StudyPlan, store=None) -> list[str]:
    """The distinct messages of the study's queued jobs (why they went back to the queue), first seen first."""
    store = store or _store()
    out: list[str] = []
    for run in p.runs:
        job = _get(store, run.run_id)
        message = _field(job, "message") if job is not None and _field(job, "status") == "queued" else ""
        if message and message not in out:
            out.append(message)
    return out


def run_here(p: StudyPlan, store=None, on_event=None, on_run=None) -> dict[str, str]:
    """Run the study's queued jobs in this process, one after another (as `python -m nsa run` does for one).

    The model and libraries are imported once instead of once per job (a worker starts a fresh process per
    job). A job another process already runs is left to it. `on_event(run, event)` gets each progress event,
    `on_run(run, status)` each outcome; returns {run_id: status}. Ctrl-C marks the running job cancelled
    (and propagates).
    """
    store = store or _store()
    pid = os.getpid()
    outcome: dict[str, str] = {}
    for run in p.to_run:
        if not store.claim(run.run_id, pid):
            continue  # running in a worker, finished meanwhile, or not queued
        stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(store, pid, run.run_id, stop, BEAT_S), daemon=True)
        beat.start()
        try:
            also = (lambda event, run=run: on_event(run, event)) if on_event else None
            outcome[run.run_id] = run_in_process(store, store.get(run.run_id), also=also, child=False)
        finally:
            stop.set()
            store.worker_gone(pid)
        if outcome[run.run_id] == "done":
            p.finished.add(run.run_id)
        if on_run:
            on_run(run, outcome[run.run_id])
    return outcome


def _beat(store, pid: int, run_id: str, stop, every_s: float) -> None:
    while not stop.wait(every_s):
        store.worker_beat(pid, run_id)


def progress(p: StudyPlan, store=None) -> StudyProgress:
    """The study's state from the queue and the run folders (jobs whose worker died are recovered first)."""
    store = store or _store()
    recover(store)
    state = StudyProgress(total=len(p.runs))
    for run in p.runs:
        if run.run_id in p.finished or is_finished(run.run_id):
            p.finished.add(run.run_id)
            state.done += 1
            continue
        job = _get(store, run.run_id)
        status = _field(job, "status") if job is not None else None
        if status == "running":
            state.running += 1
            state.partial += float(_field(job, "progress") or 0.0)
            state.current = f"{run.label()}: {_field(job, 'stage') or ''} {_field(job, 'message') or ''}".strip()
        elif status == "queued":
            state.queued += 1
        elif status == "failed":
            state.failed += 1
            state.failures[run.run_id] = f"{run.label()}: {_first_line(_field(job, 'error') or _field(job, 'message'))}"
        elif status == "cancelled":
            state.cancelled += 1
        elif status == "done":  # done but without a comparison: the spec evaluated no accuracy task
            state.done += 1
        else:
            state.missing += 1
    return state


def timing(p: StudyPlan, store=None) -> dict:
    """Elapsed seconds since the study's first job started, seconds per finished run (from the store's start and
    finish times) and the estimated seconds left for the runs still to finish (None until one has finished)."""
    store = store or _store()
    jobs = [j for j in (_get(store, r.run_id) for r in p.runs) if j is not None]
    started = [j.started for j in jobs if j.started]
    done = [j.finished - j.started for j in jobs if j.status == "done" and j.started and j.finished]
    per_run = sum(done) / len(done) if done else None
    left = len([r for r in p.runs if r.run_id not in p.finished])
    running = [j for j in jobs if j.status == "running"]
    progress = sum(float(j.progress or 0.0) for j in running)
    return {"elapsed_s": time.time() - min(started) if started else 0.0, "per_run_s": per_run,
            "left_s": None if per_run is None else max(0.0, (left - progress) * per_run)}


def stop(p: StudyPlan, store=None) -> int:
    """Cancel the study's queued and running jobs; returns how many were cancelled."""
    store = store or _store()
    n = 0
    for run in p.runs:
        job = _get(store, run.run_id)
        if job is not None and _field(job, "status") in ACTIVE:
            store.cancel(run.run_id)
            n += 1
    return n


def job_of(run: StudyRun, store=None):
    """The queue's record of a run (None when it was never submitted)."""
    return _get(store or _store(), run.run_id)


def study_table(p: StudyPlan):
    """The results table (`nsa.study.results`) of the study's finished runs."""
    return results_table(run_dir(r.run_id) for r in p.runs if is_finished(r.run_id))


def _store():
    return JobStore()


def _get(store, run_id: str):
    try:
        return store.get(run_id)
    except (KeyError, NSAError):
        return None


def _field(job, name: str):
    return job.get(name) if isinstance(job, dict) else getattr(job, name, None)


def _first_line(text) -> str:
    text = str(text or "unknown error").strip()
    return text.splitlines()[0] if text else "unknown error"
