"""The background worker: takes queued jobs from the store and runs each in a child process.

One worker per machine holds `cache_dir()/worker.lock` (an advisory `flock`, released by the OS when the
process dies, so a killed worker never blocks the next). Each job runs in its own child process: a crash,
a CUDA out-of-memory error or a leak cannot take the worker down, and the child's GPU memory is freed when it
exits. Children come from a 'forkserver' that imported torch, transformers, lm-evaluation-harness and
scikit-learn once (about 10-15 s of imports on 2 cores): every job after the first starts in well under a
second instead of paying those imports again, which matters for studies of dozens of runs. The forkserver is
single-threaded when it forks (no CUDA, no thread pools started), so forking it is safe; it exits with the
worker, and each child is SIGKILLed by the kernel when its parent goes (PR_SET_PDEATHSIG). The child writes progress to the store; the worker beats the heartbeat every
`BEAT_S` seconds, and on `cancel` terminates the child (SIGTERM, then SIGKILL) within seconds.

Recovery: a running job whose worker is gone (its pid is dead on this host, or its heartbeat is older than
`STALE_S`) is re-queued once and failed the second time; the half-built temporary folder it left is removed,
so only complete runs are ever visible.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback as tb
from pathlib import Path
from typing import Callable

from nsa.errors import NSAError
from nsa.jobs.pipeline import run_job
from nsa.jobs.runs import clean_partial, run_dir, verify_run
from nsa.jobs.spec import JobSpec
from nsa.jobs.store import Job, JobStore
from nsa.paths import PROJECT_ROOT, cache_dir
from pruners.errors import PruneError

# imported once by the forkserver that forks every job's process (failed imports are skipped by Python)
# what every job imports, loaded once in the forkserver: transformers' model classes are imported lazily on the
# first from_pretrained (about 1000 modules, 2 s of a job's time when not preloaded)
PRELOAD = ["torch", "transformers", "transformers.modeling_utils", "transformers.generation.utils",
           "transformers.models.auto.tokenization_auto", "transformers.models.llama.modeling_llama",
           "transformers.models.gpt2.modeling_gpt2", "lm_eval.evaluator", "lm_eval.models.huggingface",
           "lm_eval.tasks", "sklearn.linear_model", "nsa.jobs.pipeline", "nsa.evaluation", "nsa.attribution"]
BEAT_S = 1.0
POLL_S = 0.5
STALE_S = float(os.environ.get("NSA_JOB_STALE_S", "60"))
MAX_ATTEMPTS = 2  # a job interrupted by a dead worker is run once more, then failed
KILL_GRACE_S = 3.0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or `taskset`'s share)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def job_threads(default: int) -> int:
    """Torch threads of a job: `NSA_JOB_THREADS` when set, else `default`.

    The background worker's default is every usable core (`usable_cores()`), as torch's own: one job runs at a
    time, and on a machine that does nothing else that is fastest (the app's default SmolLM2 job on 2 cores:
    4.1-5.3 min with 2 threads by machine, 9.9 min with 1). Beside another busy process (a study run in a terminal, a test
    run) torch's threads oversubscribe the cores: a 2-thread job ran up to 6x slower than a 1-thread one there
    (demo job 490 s vs 81 s); set NSA_JOB_THREADS=1 on a shared machine. OMP_WAIT_POLICY=PASSIVE would soften
    that but costs 24 % on a quiet machine (SmolLM2 forwards, 2 threads: 30.8 s vs 24.9 s), so it is not set.
    `nsa run` (foreground) keeps torch's own count.
    The count is recorded in stats.json, because it can move masks at exact ties (docs/pruning.md).
    """
    raw = os.environ.get("NSA_JOB_THREADS", "").strip()
    if not raw:
        return max(1, int(default))
    if not raw.isdigit() or int(raw) < 1:
        raise NSAError(f"NSA_JOB_THREADS={raw!r} is not a positive whole number of threads: set it to e.g. 1 or 2, "
                       "or unset it for the default")
    return int(raw)


OOM_HINT = ("GPU out of memory during stage {stage!r}: lower calibration.nsamples or calibration.seqlen, "
            "evaluate.limit, use dtype float16/bfloat16, or run on a larger GPU (device: cpu works too, slowly)")
HOST_OOM_HINT = ("out of host memory during stage {stage!r}: lower calibration.nsamples or calibration.seqlen, "
                 "evaluate.limit or nsa.limit, or use dtype bfloat16")


def lock_path() -> Path:
    return cache_dir() / "worker.lock"


@contextlib.contextmanager
def worker_lock(executor: str = "local"):
    """Hold the worker lock (the file says `<pid> <executor>`); `NSAError` when another worker holds it."""
    path = lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NSAError(f"another worker is already running (it holds {path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {executor}".encode())
        yield
    finally:
        os.close(fd)


def worker_running() -> bool:
    """True when some process holds the worker lock."""
    path = lock_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def running_worker() -> dict | None:
    """The worker holding the lock now: {"pid", "executor"} ("local" or "ray"), or None when none runs."""
    if not worker_running():
        return None
    try:
        pid, _, executor = lock_path().read_text().strip().partition(" ")
        return {"pid": int(pid), "executor": executor or "local"}
    except (OSError, ValueError):
        return {"pid": None, "executor": "local"}


def worker_alive() -> bool:
    """A worker holds the lock, or one was started moments ago and is still importing."""
    return worker_running() or _recently_spawned()


def ensure_worker(store: JobStore | None = None, idle_exit_s: float = 120.0, args: tuple[str, ...] = ()) -> int | None:
    """Start a background worker when jobs are queued and none runs; returns the new process id (or None).

    The worker is a detached `python -m nsa worker [args]` (its output goes to `cache_dir()/logs/worker.log`)
    that exits after `idle_exit_s` seconds with an empty queue. The app and `nsa study` call this after
    submitting; `args` choose another executor (`nsa.jobs.executors.Executor.worker_args`). With NSA_NO_WORKER=1
    jobs are only queued (for a machine whose worker runs elsewhere, and for tests).
    """
    store = store or JobStore()
    recover(store)
    if store.count("queued") == 0 or os.environ.get("NSA_NO_WORKER") == "1":  # NSA_NO_WORKER: queue only
        return None
    with _exclusive(cache_dir() / "worker.spawn.lock"):  # many submits at once start one worker
        if worker_running() or _recently_spawned():
            return None
        log = worker_log()
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, NSA_CACHE_DIR=str(cache_dir()))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        with open(log, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "nsa", "worker", "--idle-exit", str(idle_exit_s), *args],
                                    cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        _spawn_marker().write_text(json.dumps({"pid": proc.pid, "time": time.time()}))
    return proc.pid


def worker_log() -> Path:
    """Where background workers write their output."""
    return cache_dir() / "logs" / "worker.log"


SPAWN_GRACE_S = 30.0  # a just-started worker takes its lock after its imports (a few seconds)


def _spawn_marker() -> Path:
    return cache_dir() / "worker.spawned.json"


def _recently_spawned() -> bool:
    """A worker this machine started moments ago that is still alive but has not taken its lock yet."""
    try:
        marker = json.loads(_spawn_marker().read_text())
    except (OSError, ValueError):
        return False
    return time.time() - float(marker.get("time", 0)) < SPAWN_GRACE_S and _pid_alive(int(marker.get("pid", 0)))


@contextlib.contextmanager
def _exclusive(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- recovery -------------------------------------------------------------------------------------------
def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def recover(store: JobStore, stale_s: float | None = None, me: int | None = None) -> list[str]:
    """Re-queue (once) or fail running jobs whose worker died; returns the ids recovered."""
    stale_s = STALE_S if stale_s is None else stale_s
    now, out = time.time(), []
    workers = {w["pid"]: w for w in store.workers()}
    for job in store.running():
        if job.worker_pid == me and me is not None:
            continue
        worker = workers.get(job.worker_pid)
        local = worker is None or worker["host"] == _host()
        dead = local and not _pid_alive(job.worker_pid)
        stale = (now - (job.heartbeat or job.started or now)) > stale_s
        if not (dead or stale):
            continue
        reason = f"its worker (pid {job.worker_pid}) " + ("died" if dead else f"stopped beating for {stale_s:.0f} s")
        clean_partial(job.id)
        if job.attempts < MAX_ATTEMPTS:
            store.requeue(job.id, f"re-queued: {reason} during {job.stage or 'start'}")
        else:
            store.finish(job.id, "failed", message=f"failed: {reason} (twice)",
                         error=f"the job was interrupted twice: {reason} during stage {job.stage!r}")
        if worker is not None and dead:
            store.worker_gone(job.worker_pid)
        out.append(job.id)
    return out


def _host() -> str:
    import socket

    return socket.gethostname()


# --- the worker loop ------------------------------------------------------------------------------------
def run_worker(store: JobStore | None = None, once: bool = False, idle_exit_s: float | None = None,
               log: Callable[[str], None] = print) -> int:
    """Run queued jobs until the queue is empty (`once`), idle for `idle_exit_s`, or forever; returns #jobs."""
    job_threads(1)  # a bad NSA_JOB_THREADS is refused here, before any job is claimed
    store = store or JobStore()
    pid = os.getpid()
    done = 0
    stopping = {"flag": False}

    def _stop(signum, frame):  # noqa: ARG001 - SIGTERM: finish cleanly (the running job is re-queued)
        stopping["flag"] = True

    previous = signal.signal(signal.SIGTERM, _stop)
    with worker_lock():
        log(f"worker {pid} started; store {store.path}")
        idle_since = time.time()
        try:
            while not stopping["flag"]:
                store.worker_beat(pid)
                recover(store, me=pid)
                job = store.claim_next(pid)
                if job is None:
                    if once or (idle_exit_s is not None and time.time() - idle_since > idle_exit_s):
                        break
                    time.sleep(POLL_S)
                    continue
                log(f"job {job.id}: started")
                status = _supervise(store, job, pid, stopping)
                log(f"job {job.id}: {status}")
                done += 1
                idle_since = time.time()
        finally:
            store.worker_gone(pid)
            signal.signal(signal.SIGTERM, previous)
    return done


def _supervise(store: JobStore, job: Job, pid: int, stopping: dict) -> str:
    """Run `job` in a forked child, beating its heartbeat and honouring cancel; returns its final status."""
    import multiprocessing as mp


    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    child = ctx.Process(target=child_main, args=(job.id, str(store.path), os.getpid()), name=f"nsa-job-{job.id}",
                        daemon=False)
    child.start()
    cancelled = False
    while child.is_alive():
        child.join(POLL_S)
        if store.replaced:  # jobs.sqlite was deleted or replaced: recreate it and keep this job on record
            store.restore_running(job, pid)
        store.worker_beat(pid, job.id)
        current = store.get(job.id)
        if current is None:
            store.restore_running(job, pid)
            current = store.get(job.id)
        if current.cancel_requested or stopping["flag"]:
            cancelled = current.cancel_requested
            _terminate(child)
            break
    child.join()
    clean_partial(job.id)
    final = store.get(job.id)
    if final is None:
        return "deleted"
    if final.status != "running":
        return final.status
    if cancelled:
        store.finish(job.id, "cancelled", message=f"cancelled during {final.stage or 'start'}")
        return "cancelled"
    if stopping["flag"]:
        store.requeue(job.id, "re-queued: the worker was stopped")
        return "re-queued"
    code = child.exitcode
    if code == 0 and not verify_run(job.id):  # finished, but its "done" went into a store deleted under it
        store.finish(job.id, "done", message=f"run folder {run_dir(job.id)} (re-recorded: the job store was "
                                             "replaced while the job ran)")
        return "done"
    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGKILL:
        why += " (often the system running out of memory: lower calibration.nsamples, seqlen or evaluate.limit)"
    store.finish(job.id, "failed", message=f"the job process died ({why}) during {final.stage}",
                 error=f"the job process died ({why}) during stage {final.stage!r}")
    return "failed"


def _terminate(child) -> None:
    child.terminate()
    child.join(KILL_GRACE_S)
    if child.is_alive():
        child.kill()
        child.join()


# --- the child ------------------------------------------------------------------------------------------
def child_main(job_id: str, store_path: str, worker_pid: int | None = None) -> None:
    """Entry point of the job's own process: run the pipeline, write progress and the final status."""
    _die_with_parent()
    if worker_pid is not None:
        _die_with_worker(worker_pid)
    import torch

    torch.set_num_threads(job_threads(usable_cores()))
    store = JobStore(store_path)
    job = store.get(job_id)
    if job is None or job.status != "running":
        return
    run_in_process(store, job)


def run_in_process(store: JobStore, job: Job, also: Callable | None = None, child: bool = True) -> str:
    """Run `job` (already marked running) here, recording progress and its outcome in `store`.

    `also` receives every progress event too (the CLI's bar). `child=True`: this is a worker's child,
    which stops when its worker dies.
    """
    stage = {"name": "starting"}
    writer = ProgressWriter(store, job.id, stage, also=also, watch_parent=child)
    try:
        folder = run_job(JobSpec.stored(job.spec), progress=writer, run_id=job.id)
    except BaseException as err:  # noqa: BLE001 - every failure is recorded, a bug with its traceback
        if isinstance(err, KeyboardInterrupt):
            store.finish(job.id, "cancelled", message=f"interrupted during {stage['name']}")
            raise
        message, error = describe_failure(err, stage["name"])
        store.finish(job.id, "failed", message=message, error=error, traceback=tb.format_exc())
        if isinstance(err, SystemExit):
            raise
        return "failed"
    store.finish(job.id, "done", message=f"run folder {folder}")
    return "done"


def describe_failure(err: BaseException, stage: str) -> tuple[str, str]:
    """(message, error) recorded for a job that raised `err` during `stage`, whichever executor ran it: the
    problem of an `NSAError`/`PruneError`, what to lower after running out of memory, else the exception."""
    if isinstance(err, (NSAError, PruneError)):
        return f"failed during {stage}: {err}", str(err)
    if _is_oom(err):
        hint = OOM_HINT if "CUDA" in str(err) or type(err).__name__ == "OutOfMemoryError" else HOST_OOM_HINT
        message = hint.format(stage=stage)
        return message, f"{message}\n({err})"
    return f"failed during {stage}: {type(err).__name__}: {err}", f"{type(err).__name__}: {err}"


class ProgressWriter:
    """Progress callback writing to the store, or to anything with its `update` (stage changes at once, else at
    most every 0.2 s)."""
    def __init__(self, store: JobStore, job_id: str, stage: dict, every_s: float = 0.2,
                 also: Callable | None = None, watch_parent: bool = True):
        self.store, self.job_id, self.stage, self.every_s = store, job_id, stage, every_s
        self.last = 0.0
        self.also = also
        self.parent = os.getppid() if watch_parent else None

    def __call__(self, event) -> None:
        if self.parent is not None and os.getppid() != self.parent:  # the worker died: the next one re-runs it
            os._exit(3)
        if self.also is not None:
            self.also(event)
        now = time.time()
        changed = event.stage != self.stage["name"]
        if changed or now - self.last >= self.every_s or event.fraction >= 1.0:
            self.stage["name"] = event.stage
            self.store.update(self.job_id, stage=event.stage, progress=round(event.fraction, 4),
                              message=event.message[:500])
            self.last = now


def _is_oom(err: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), Python's MemoryError, or the CPU allocator's refusal."""
    name = type(err).__name__
    text = str(err)
    return (name == "OutOfMemoryError" or "CUDA out of memory" in text or isinstance(err, MemoryError)
            or "DefaultCPUAllocator: can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text)


def _die_with_worker(worker_pid: int) -> None:
    """Kill this process as soon as the worker `worker_pid` is gone (kill -9 included).

    A forkserver child's parent is the forkserver, which outlives a killed worker while its children run, so
    PR_SET_PDEATHSIG alone would leave an orphan writing progress. A daemon thread waits on a pidfd of the
    worker (Linux >= 5.3; polling `kill(pid, 0)` elsewhere) and SIGKILLs this process when it exits.
    """
    import select
    import threading

    def watch() -> None:
        try:
            fd = os.pidfd_open(worker_pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                try:
                    os.kill(worker_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-worker", daemon=True).start()


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this child when the worker dies (kill -9 included)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
