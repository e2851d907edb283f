"""The job store: one SQLite file (WAL mode) shared by the app, the CLI, studies and workers.

Each row is one job (= one run; the id is the spec's hash, see `nsa.jobs.spec`). Status moves
queued → running → done | failed | cancelled. The store is only the queue: `nsa.jobs.submit.submit` decides
whether a run is already complete; `enqueue` of a job that is queued or running changes nothing
(`INSERT OR IGNORE` on the id makes two processes submitting at once one job), and a finished one is queued
again.

Every connection is short-lived (open, one transaction, close) so the store can be used from any process
or thread; writers wait up to `BUSY_TIMEOUT_S` for the lock instead of failing.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from nsa.errors import NSAError
from nsa.jobs.spec import JobSpec
from nsa.paths import cache_dir

STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
BUSY_TIMEOUT_S = 30.0
# what SQLite answers while jobs.sqlite, -wal or -shm are deleted under a connection (someone ran `rm jobs.sqlite*`
# while a worker ran): the call is retried on a recreated store instead of crashing the worker
VANISHED = ("no such table", "disk i/o error")
VANISHED_RETRIES = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    stage TEXT NOT NULL DEFAULT '',
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    traceback TEXT,
    worker_pid INTEGER,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created);
CREATE TABLE IF NOT EXISTS workers (
    pid INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    started REAL NOT NULL,
    heartbeat REAL NOT NULL,
    job_id TEXT
);
CREATE TABLE IF NOT EXISTS placements (
    job_id TEXT PRIMARY KEY,
    executor TEXT NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    gpus TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 1,
    updated REAL NOT NULL
);
"""


@dataclass
class Job:
    """One row of the store. `progress` is the job's overall fraction (0..1); times are Unix seconds."""

    id: str
    spec: dict
    status: str
    stage: str
    progress: float
    message: str
    created: float
    started: float | None
    finished: float | None
    error: str | None
    traceback: str | None
    worker_pid: int | None
    heartbeat: float | None
    attempts: int
    cancel_requested: bool

    def get(self, name: str, default: Any = None) -> Any:
        """Dict-style access, so callers may treat a job as a mapping."""
        return getattr(self, name, default)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def _vanished(err: sqlite3.Error) -> bool:
    return any(text in str(err).lower() for text in VANISHED)


def survives_deletion(method):
    """Retry a store call that failed because the store file was deleted under it: recreate the tables, run again.
    A failed call changed nothing it could keep (its transaction rolled back, or it wrote into the deleted file),
    so running it again is safe."""
    @functools.wraps(method)
    def retrying(self, *args, **kwargs):
        for attempt in range(VANISHED_RETRIES + 1):
            try:
                if attempt:
                    self._init()
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as err:
                if attempt == VANISHED_RETRIES or not _vanished(err):
                    raise
                time.sleep(0.02 * (attempt + 1))
    return retrying


def default_path() -> Path:
    return cache_dir() / "jobs.sqlite"


class JobStore:
    """The queue. `JobStore()` uses `cache_dir()/jobs.sqlite`; the file and tables are created on first use."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None  # (device, inode) of the file this store initialised
        self._init()

    @property
    def replaced(self) -> bool:
        """The store file was deleted or replaced since this object opened it (someone removed jobs.sqlite)."""
        try:
            st = self.path.stat()
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._file

    def _init(self) -> None:
        """Switch to WAL and create the tables; retried, because SQLite answers a journal-mode change racing
        another process's with "database is locked" without waiting for it, and a store being deleted with
        "disk I/O error"."""
        deadline = time.time() + BUSY_TIMEOUT_S
        while True:
            try:
                with self._connect(check=False) as db:
                    if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)
                st = self.path.stat()
                self._file = (st.st_dev, st.st_ino)
                return
            except (FileNotFoundError, sqlite3.DatabaseError) as err:  # FileNotFoundError: deleted again at once
                transient = isinstance(err, FileNotFoundError) or "locked" in str(err) or _vanished(err)
                if not transient or time.time() > deadline:
                    raise NSAError(f"cannot open the job store {self.path}: {err}") from None
                time.sleep(0.05)

    @contextlib.contextmanager
    def _connect(self, check: bool = True) -> Iterator[sqlite3.Connection]:
        if check and self.replaced:  # deleted or replaced under us: recreate the tables instead of failing
            self._init()
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_S * 1000))
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so read-then-write steps cannot interleave."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- submitting and reading ---------------------------------------------------------------------------
    @survives_deletion
    def enqueue(self, spec: JobSpec) -> str:
        """Queue `spec` unless it is queued or running; a finished (done, failed, cancelled) job is queued again.
        Returns its id."""
        job_id, text = spec.id, json.dumps(spec.to_dict(), sort_keys=True)
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO jobs (id, spec, created) VALUES (?, ?, ?)", (job_id, text, now))
            status = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()["status"]
            if status not in ACTIVE:
                self._requeue_finished(db, job_id, now)
        return job_id

    @survives_deletion
    def record_done(self, spec: JobSpec, message: str) -> None:
        """A run found complete on disk: its job row says done (created when missing; an active one is left)."""
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO jobs (id, spec, created, status, progress, finished, message) "
                       "VALUES (?, ?, ?, 'done', 1, ?, ?)", (spec.id, json.dumps(spec.to_dict(), sort_keys=True),
                                                            now, now, message))
            db.execute("UPDATE jobs SET status='done', progress=1, message=? WHERE id=? AND status IN "
                       "('failed', 'cancelled')", (message, spec.id))

    @staticmethod
    def _requeue_finished(db: sqlite3.Connection, job_id: str, now: float) -> None:
        db.execute("UPDATE jobs SET status='queued', stage='', progress=0, message='', error=NULL, traceback=NULL, "
                   "created=?, started=NULL, finished=NULL, worker_pid=NULL, heartbeat=NULL, attempts=0, "
                   "cancel_requested=0 WHERE id=?", (now, job_id))
        db.execute("DELETE FROM placements WHERE job_id=?", (job_id,))

    @survives_deletion
    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None when there is none."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def require(self, job_id: str) -> Job:
        """Like `get` but an unknown id (also a unique prefix of one) is resolved or an `NSAError`."""
        job = self.get(job_id)
        if job is not None:
            return job
        matches = [j for j in self.list() if j.id.startswith(job_id)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise NSAError(f"job id {job_id!r} is ambiguous: {', '.join(j.id for j in matches)}")
        raise NSAError(f"no job with id {job_id!r} (list them with `python -m nsa jobs`)")

    @survives_deletion
    def list(self, status: str | None = None) -> list[Job]:
        """All jobs (or those with `status`), newest first."""
        with self._connect() as db:
            if status:
                rows = db.execute("SELECT * FROM jobs WHERE status=? ORDER BY created DESC", (status,))
            else:
                rows = db.execute("SELECT * FROM jobs ORDER BY created DESC")
            return [_job(r) for r in rows.fetchall()]

    @survives_deletion
    def count(self, status: str) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()[0]

    @survives_deletion
    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one by its worker within seconds."""
        job = self.require(job_id)
        with self._transaction() as db:
            db.execute("UPDATE jobs SET status='cancelled', finished=?, message='cancelled before it started' "
                       "WHERE id=? AND status='queued'", (time.time(), job.id))
            db.execute("UPDATE jobs SET cancel_requested=1, message='cancelling…' WHERE id=? AND status='running'",
                       (job.id,))
        return self.get(job.id)

    @survives_deletion
    def delete(self, job_id: str) -> None:
        """Forget a finished job (its run folder is removed with `nsa.jobs.runs.delete_run`)."""
        with self._transaction() as db:
            cur = db.execute("DELETE FROM jobs WHERE id=? AND status NOT IN ('queued', 'running')", (job_id,))
            if cur.rowcount:
                db.execute("DELETE FROM placements WHERE job_id=?", (job_id,))

    # --- the worker's side --------------------------------------------------------------------------------
    @survives_deletion
    def claim_next(self, worker_pid: int) -> Job | None:
        """Atomically take the oldest queued job and mark it running for `worker_pid`."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status='running', started=?, heartbeat=?, worker_pid=?, stage='starting', "
                       "progress=0, message='', attempts=attempts+1 WHERE id=?", (now, now, worker_pid, row["id"]))
        return self.get(row["id"])

    @survives_deletion
    def claim(self, job_id: str, worker_pid: int) -> bool:
        """Mark this queued job running for `worker_pid` (the foreground `nsa run`); False if not queued."""
        now = time.time()
        with self._transaction() as db:
            cur = db.execute("UPDATE jobs SET status='running', started=?, heartbeat=?, worker_pid=?, "
                             "stage='starting', progress=0, message='', attempts=attempts+1 "
                             "WHERE id=? AND status='queued'", (now, now, worker_pid, job_id))
            return cur.rowcount == 1

    @survives_deletion
    def update(self, job_id: str, stage: str | None = None, progress: float | None = None,
               message: str | None = None) -> None:
        """Progress from the job's process; also refreshes the heartbeat."""
        sets, args = ["heartbeat=?"], [time.time()]
        for name, value in (("stage", stage), ("progress", progress), ("message", message)):
            if value is not None:
                sets.append(f"{name}=?")
                args.append(value)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=? AND status='running'", (*args, job_id))

    @survives_deletion
    def finish(self, job_id: str, status: str, message: str = "", error: str | None = None,
               traceback: str | None = None) -> None:
        """Mark a running job done / failed / cancelled."""
        if status not in ("done", "failed", "cancelled"):
            raise ValueError(f"finish: bad status {status!r}")
        progress_sql = ", progress=1" if status == "done" else ""
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET status=?, finished=?, message=?, error=?, traceback=?, cancel_requested=0"
                       f"{progress_sql} WHERE id=? AND status='running'",
                       (status, time.time(), message, error, traceback, job_id))

    @survives_deletion
    def restore_running(self, job: Job, worker_pid: int) -> None:
        """Put back the row of a job this worker is running after the store was replaced (its progress and
        outcome then land in the new store instead of nowhere)."""
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO jobs (id, spec, created, status, started, heartbeat, worker_pid, stage, "
                       "attempts, message) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                       (job.id, json.dumps(job.spec, sort_keys=True), job.created, job.started or now, now,
                        worker_pid, job.stage or "starting", job.attempts,
                        "re-registered: the job store was replaced while the job ran"))

    @survives_deletion
    def requeue(self, job_id: str, message: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET status='queued', stage='', progress=0, message=?, worker_pid=NULL, "
                       "started=NULL WHERE id=? AND status='running'", (message, job_id))

    def running(self) -> list[Job]:
        return self.list("running")

    # --- workers ------------------------------------------------------------------------------------------
    @survives_deletion
    def worker_beat(self, pid: int, job_id: str | None = None) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT INTO workers (pid, host, started, heartbeat, job_id) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(pid) DO UPDATE SET heartbeat=excluded.heartbeat, job_id=excluded.job_id",
                       (pid, _host(), now, now, job_id))
            if job_id:
                db.execute("UPDATE jobs SET heartbeat=? WHERE id=? AND status='running'", (now, job_id))

    @survives_deletion
    def worker_gone(self, pid: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM workers WHERE pid=?", (pid,))

    @survives_deletion
    def workers(self) -> list[dict]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT * FROM workers ORDER BY started").fetchall()]

    # --- where a job runs (written by executors that run jobs on other machines) ------------------------
    @survives_deletion
    def place(self, job_id: str, executor: str, host: str = "", node: str = "", pid: int | None = None,
              gpus: str = "", attempt: int = 1) -> None:
        """Record where `job_id` runs now (its latest attempt): executor, host, node id, process, GPU ids."""
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO placements (job_id, executor, host, node, pid, gpus, attempt, updated) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (job_id, executor, host, node, pid, gpus, attempt,
                                                          time.time()))

    @survives_deletion
    def placement(self, job_id: str) -> dict | None:
        """Where the job ran or runs ({executor, host, node, pid, gpus, attempt, updated}), None if unrecorded
        (the local worker runs jobs on this machine: see `worker_pid`)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM placements WHERE job_id=?", (job_id,)).fetchone()
        return dict(row) if row else None

    @survives_deletion
    def placements(self) -> dict[str, dict]:
        """{job id: placement} for every recorded job."""
        with self._connect() as db:
            return {r["job_id"]: dict(r) for r in db.execute("SELECT * FROM placements").fetchall()}


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    return Job(**data)


def _host() -> str:
    import socket

    return socket.gethostname()
