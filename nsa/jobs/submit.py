"""The one way to ask for a run: `submit(spec)`, used by every page, command and study.

It answers "already done" when the run folder exists and verifies (sizes always; every file's hash once per
process), so nothing is recomputed; otherwise it queues the job (a job already queued or running is the same
job: the store deduplicates by run id), recovers jobs whose worker died, and starts a background worker when
none is running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nsa.errors import NSAError
from nsa.jobs.executors import Executor, LocalExecutor
from nsa.jobs.executors import start_worker as start_executor_worker
from nsa.jobs.runs import verify_run
from nsa.jobs.spec import parse_spec
from nsa.jobs.store import JobStore
from nsa.jobs.worker import recover
from nsa.models import check_device


@dataclass
class Submission:
    run_id: str
    status: str  # "done" (complete on disk), "queued" or "running"
    already_done: bool
    problems: list[str]  # why a run folder that existed did not verify ([] when there was none or it is fine)
    worker_pid: int | None = None  # a worker started by this call

    @property
    def message(self) -> str:
        if self.already_done:
            return f"run {self.run_id} is already complete: nothing to compute"
        fixed = f" (its folder was bad: {self.problems[0]})" if self.problems and self.problems != ["missing"] else ""
        return f"run {self.run_id} {self.status}{fixed}"


def submit(spec: Any, store: JobStore | None = None, start_worker: bool = True,
           executor: Executor | None = None) -> Submission:
    """Queue `spec` (a JobSpec or a mapping) unless its run is complete; see the module docstring. `executor`
    (default: the local worker) is the one a background worker started here uses; the Ray executor's jobs
    run on the cluster's nodes, so a device this machine lacks is left to them (a CUDA job needs a GPU node)."""
    spec = parse_spec(spec)
    executor = executor or LocalExecutor()
    try:
        if executor.runs_here:
            check_device(spec.device)  # the local worker runs it here: a GPU this machine lacks is refused now
    except NSAError as err:
        raise NSAError(err.at("device")) from None
    store = store or JobStore()
    recover(store)
    problems = verify_run(spec.id)
    if not problems:
        store.record_done(spec, f"run folder {spec.id} verified")
        return Submission(spec.id, "done", True, [])
    store.enqueue(spec)
    pid = start_executor_worker(store, executor) if start_worker else None
    job = store.get(spec.id)
    return Submission(spec.id, job.status if job else "queued", False, problems, pid)
