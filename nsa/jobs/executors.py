"""Executors: where queued jobs run. `local` (the default: this machine's worker, `nsa.jobs.worker`) or `ray`
(the nodes of a Ray cluster, `nsa.jobs.ray_driver`).

Both drain the one job store (`nsa.jobs.store`), the single record of the queue, written only on this machine:
submitting is the same (`nsa.jobs.submit.submit`), a study is the same list of jobs, and `serve` is the worker
loop (`python -m nsa worker [--executor ray]`): it holds the worker lock, claims queued jobs, records their
progress and outcome, honours cancels. Only the place where the pipeline runs differs. Nothing Ray-specific is
imported unless the Ray executor is chosen (`cluster_status` imports Ray too, to ask a cluster).

    executor = get_executor("ray", address="auto")   # or get_executor() for the local worker
    executor.check()                                  # NSAError in seconds naming the address when unreachable
    submit(spec, executor=executor)                   # queue it and start a background worker using it
    cluster_status("auto")                            # for the app: reachable?, nodes, free CPUs/GPUs/memory
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nsa.errors import NSAError
from nsa.jobs import ray_driver
from nsa.jobs.ray_driver import answers
from nsa.jobs.store import JobStore
from nsa.jobs.worker import ensure_worker, run_worker

EXECUTORS = ("local", "ray")
PROBE_S = 2.0  # how long an address may take to answer before it counts as unreachable


class Executor:
    """What runs queued jobs. `runs_here`: jobs run on this machine, so a device it lacks is refused at submit."""

    name = "local"
    runs_here = True

    def check(self) -> None:
        """Raise `NSAError` at once (seconds) when this executor cannot run jobs now."""

    def serve(self, store: JobStore | None = None, once: bool = False, idle_exit_s: float | None = None,
              only: set[str] | None = None, log: Callable[[str], None] = print) -> int:
        """Run queued jobs in this process's worker loop (holding the worker lock) until the queue is empty
        (`once`), idle for `idle_exit_s`, or stopped; `only`: just these job ids. Returns how many ran."""
        raise NotImplementedError

    def worker_args(self) -> tuple[str, ...]:
        """The `python -m nsa worker` options of a background worker using this executor."""
        return ()

    def describe(self) -> str:
        return "this machine's worker"


@dataclass(frozen=True)
class LocalExecutor(Executor):
    """Today's worker: one job at a time in a child process of `python -m nsa worker` on this machine."""

    name = "local"

    def serve(self, store=None, once=False, idle_exit_s=None, only=None, log=print) -> int:
        if only is not None:
            raise NSAError("the local worker runs the whole queue in order (it cannot be limited to some jobs)")
        return run_worker(store, once=once, idle_exit_s=idle_exit_s, log=log)


@dataclass(frozen=True)
class RayExecutor(Executor):
    """Jobs as Ray tasks on a cluster (see `nsa.jobs.ray_driver` and docs/jobs.md).

    `address`: `host:port` of a cluster's head, `ray://host:10001`, or "auto" (the cluster `ray start` started
    on this machine); None: `RAY_ADDRESS`, else a cluster running on this machine, else a local Ray instance
    started for the run. `shared_cache`: every node sees this machine's `NSA_CACHE_DIR` at the same path, so
    tasks write their runs into it (default: staging, the run's files come back through Ray; also
    `NSA_RAY_SHARED_CACHE=1`). `cpus_per_job`: CPUs (torch threads) per CPU job (default from the model's size).
    `node_cache`: the staging cache on each node (default `<tmp>/nsa-ray-<uid>`, or `NSA_RAY_NODE_CACHE`).
    `max_retries`: runs of a job again after its Ray worker or node died.
    """

    address: str | None = None
    shared_cache: bool = field(default_factory=lambda: os.environ.get("NSA_RAY_SHARED_CACHE", "") == "1")
    cpus_per_job: int | None = None
    node_cache: str | None = field(default_factory=lambda: os.environ.get("NSA_RAY_NODE_CACHE") or None)
    max_retries: int = 2

    name = "ray"
    runs_here = False

    def __post_init__(self):
        if self.cpus_per_job is not None and (isinstance(self.cpus_per_job, bool) or int(self.cpus_per_job) < 1):
            raise NSAError(f"--cpus-per-job must be a positive integer, got {self.cpus_per_job!r}")
        if self.max_retries < 0:
            raise NSAError(f"max_retries must be >= 0, got {self.max_retries}")

    def check(self) -> None:
        resolve_address(self.address)

    def serve(self, store=None, once=False, idle_exit_s=None, only=None, log=print) -> int:
        return ray_driver.serve(self, resolve_address(self.address), store, once=once, idle_exit_s=idle_exit_s,
                                only=only, log=log)

    def worker_args(self) -> tuple[str, ...]:
        args = ["--executor", "ray"]
        if self.address:
            args += ["--address", self.address]
        if self.shared_cache:
            args.append("--shared-cache")
        if self.cpus_per_job:
            args += ["--cpus-per-job", str(self.cpus_per_job)]
        if self.node_cache:
            args += ["--node-cache", self.node_cache]
        return tuple(args)

    def describe(self) -> str:
        where = self.address or os.environ.get("RAY_ADDRESS") or "a local Ray instance (or this machine's cluster)"
        return f"the Ray cluster at {where}"


def get_executor(name: str = "local", **options) -> Executor:
    """The executor called `name` ("local" or "ray") with its options (see `RayExecutor`)."""
    if name == "local":
        given = [k for k, v in options.items() if v not in (None, False)]
        if given:
            raise NSAError(f"--{given[0].replace('_', '-')}: only with --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(**{k: v for k, v in options.items() if v is not None})
    raise NSAError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")


def start_worker(store: JobStore | None, executor: Executor, idle_exit_s: float = 120.0) -> int | None:
    """Start a background `python -m nsa worker` using `executor` when jobs are queued and no worker runs."""
    return ensure_worker(store, idle_exit_s, args=executor.worker_args())


# --- where the cluster is -----------------------------------------------------------------------------------
def resolve_address(address: str | None, timeout_s: float = PROBE_S) -> str | None:
    """The cluster to connect to (`host:port` or `ray://host:port`), checked to answer as a Ray cluster within
    about `timeout_s`; None when no address was given (nor `RAY_ADDRESS`) and no cluster runs on this machine: a
    local Ray instance is then started for the run. `NSAError` naming the address tried when none answers."""
    given = (address or os.environ.get("RAY_ADDRESS") or "").strip() or None
    if given == "local":
        return None
    if given in (None, "auto"):
        found = _started_here()
        if found is None or not answers(found, timeout_s):
            if given is None:
                return None  # no cluster here (or a stale record of one): a local instance for the run
            where = f" (the last `ray start` on this machine recorded {found}; it does not answer)" if found else ""
            raise NSAError(f"no Ray cluster found for address 'auto'{where}: start one with `ray start --head`, or "
                           "give its address (--address HOST:6379 or ray://HOST:10001), or use --executor local")
        given = found
    problem = None if answers(given, timeout_s) else f"nothing answered within {timeout_s:.0f} s"
    if problem is None and not given.startswith("ray://"):
        try:  # something answers: is it a Ray cluster's GCS? (ray.init would retry for 20 s before saying no)
            ray_driver.cluster_nodes(given, timeout_s)
        except Exception as err:  # noqa: BLE001 - whatever Ray raises, the user needs the address and the reason
            problem = f"it answers, but not as a Ray cluster: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if problem:
        raise NSAError(f"no Ray cluster reachable at {given} ({problem}): start one there with `ray start --head`, "
                       "check the address (--address, RAY_ADDRESS), or use --executor local")
    return given


def _started_here() -> str | None:
    """The address `ray start` on this machine recorded (Ray's `ray_current_cluster` file), if any."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # Ray's own rule
    path = Path(base) / "ray" / "ray_current_cluster"
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


# --- what the app shows -------------------------------------------------------------------------------------
@dataclass
class NodeStatus:
    host: str
    ip: str
    node_id: str
    alive: bool
    total: dict  # {"CPU": n, "GPU": n, "memory": bytes}
    free: dict


@dataclass
class ClusterStatus:
    reachable: bool
    address: str | None  # the address tried; None: none given and none running here (a local instance would start)
    message: str  # one line for a page: "2 nodes, 6 of 8 CPUs, 1 of 2 GPUs, 20.1 of 31.0 GB free" or why not
    nodes: list[NodeStatus] = field(default_factory=list)
    total: dict = field(default_factory=dict)
    free: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


_STATUS: dict[str | None, tuple[float, ClusterStatus]] = {}
RESOURCES = ("CPU", "GPU", "memory")


def cluster_status(address: str | None = None, timeout_s: float = 1.0, max_age_s: float = 5.0) -> ClusterStatus:
    """Is a Ray cluster reachable at `address` (None: `RAY_ADDRESS`, else one started on this machine), and what
    does it have: nodes, total and free CPUs, GPUs and memory. Answers in about `timeout_s` (a few tenths of a
    second more the first time, to import Ray), never raises, and remembers its answer `max_age_s` seconds.
    A `ray://` address is only probed (Ray Client does not expose resources without connecting)."""
    key = address
    cached = _STATUS.get(key)
    if cached is not None and time.time() - cached[0] < max_age_s:
        return cached[1]
    try:
        status = _cluster_status(address, timeout_s)
    except Exception as err:  # noqa: BLE001 - a page asks; it gets an answer, not a traceback
        status = ClusterStatus(False, address, f"cannot ask the cluster: {type(err).__name__}: {str(err)[:200]}")
    _STATUS[key] = (time.time(), status)
    return status


def _cluster_status(address: str | None, timeout_s: float) -> ClusterStatus:
    try:
        resolved = resolve_address(address, timeout_s)
    except NSAError as err:
        return ClusterStatus(False, address or os.environ.get("RAY_ADDRESS") or "auto", str(err))
    if resolved is None:
        return ClusterStatus(False, None, "no Ray cluster is running on this machine and none was named: "
                                          "--executor ray would start a local Ray instance for the run")
    if resolved.startswith("ray://"):
        return ClusterStatus(True, resolved, f"a Ray Client server answers at {resolved} (resources unknown "
                                             "until a driver connects)")
    nodes = ray_driver.cluster_nodes(resolved, timeout_s)
    alive = [n for n in nodes if n["alive"]]
    total = {k: sum(n["total"].get(k, 0.0) for n in alive) for k in RESOURCES}
    free = {k: sum(n["free"].get(k, 0.0) for n in alive) for k in RESOURCES}
    parts = [f"{len(alive)} node{'s' if len(alive) != 1 else ''}",
             f"{free['CPU']:g} of {total['CPU']:g} CPUs"]
    if total["GPU"]:
        parts.append(f"{free['GPU']:g} of {total['GPU']:g} GPUs")
    parts.append(f"{free['memory'] / 1e9:.1f} of {total['memory'] / 1e9:.1f} GB free")
    return ClusterStatus(True, resolved, ", ".join(parts), [NodeStatus(**n) for n in nodes], total, free)
