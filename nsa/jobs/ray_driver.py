"""The Ray executor's driver: the worker loop that drains the job store onto a Ray cluster.

It runs on the app's machine (`python -m nsa worker --executor ray`, or started in the background by a submit
or `nsa study --executor ray`), holds the worker lock like the local worker, and is the only writer of the
store. Each loop it claims the oldest queued jobs that fit the cluster's free capacity (its own accounting of
what it sent against `ray.cluster_resources()`; a job that no node could ever hold is failed at once), sends
each as a Ray task (`nsa.jobs.ray_task.run_on_node`) with the resources its spec needs — `num_gpus=1` for a
CUDA device; CPUs and memory from the model's size — and `max_retries` for a dead worker or node; writes the
progress events the tasks send (a `ProgressSink` actor) into the store, so the app's bars move; records where
each job runs (`JobStore.place`); cancels a job whose cancel was requested (`ray.cancel`, forced after
`KILL_GRACE_S`); and installs each finished run: in staging mode it rebuilds the run folder from the task's
files, each checked against the task's manifest, and swaps it in atomically; with a shared cache it verifies
the folder the task wrote.

Shared cache entries (staging mode): the ones a task created come back with its run and are installed here
too; the driver remembers them per model (`cache/ray/entries.json`) and sends them with the next tasks of the
same model (at most `SHIP_LIMIT` bytes per task, newest first), so a dense evaluation is computed once per
cluster, not once per node. Entries made by the local executor are not indexed: the first Ray task of a
model computes them again, once.

When the cluster goes away, the running jobs are re-queued and the driver stops with an `NSAError` naming the
cluster; when the driver itself dies, `nsa.jobs.worker.recover` re-queues its jobs (its pid is dead) and Ray
ends its tasks with it.
"""
from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nsa.artifacts import read_json
from nsa.atomic import write_json
from nsa.datasets.registry import saved_custom
from nsa.errors import NSAError
from nsa.jobs import ray_task
from nsa.jobs.runs import clean_partial, run_entry
from nsa.jobs.store import Job, JobStore
from nsa.jobs.worker import BEAT_S, describe_failure, recover, worker_lock
from nsa.models import DEMO_MODEL_DIR, looks_local
from nsa.paths import PROJECT_ROOT, cache_dir

POLL_S = 0.25
RESOURCES_EVERY_S = 5.0
KILL_GRACE_S = 3.0
LOST_AFTER_S = 3.0  # a cluster whose address has not answered this long is gone
SHIP_LIMIT = 256 << 20  # bytes of shared cache entries sent with one task
RETURN_LIMIT = 2 << 30  # the largest run folder a task sends back (staging mode); beyond: a shared cache
GIB = 1 << 30
BASE_MEMORY = int(1.5 * GIB)  # a job's libraries, evaluation and NSA buffers besides the model
ANSI = re.compile(r"\x1b\[[0-9;]*m")
ENV_VARS = ("NSA_DATA_DIR", "NSA_MODELS_DIR", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
            "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")


@dataclass
class _Running:
    job: Job
    ref: object  # the task's ObjectRef
    demand: dict
    sent: float
    token: str = ""  # the attempt whose events count (the latest "start")
    starts: int = 0
    host: str = ""
    stage: str = "starting"
    cancel_at: float | None = None
    forced: bool = False
    extra: dict = field(default_factory=dict)


class ClusterLost(Exception):
    """The cluster stopped answering while jobs ran."""


def serve(executor, address: str | None, store: JobStore | None = None, once: bool = False,
          idle_exit_s: float | None = None, only: set[str] | None = None,
          log: Callable[[str], None] = print) -> int:
    """Drain the queue onto the cluster at `address` (None: a local Ray instance, started and stopped here;
    a Ray already initialised in this process is used as it is). See the module docstring."""
    store = store or JobStore()
    with worker_lock("ray"):
        import ray

        started = not ray.is_initialized()
        where = _connect(address) if started else "the Ray instance of this process"
        try:
            driver = _Driver(executor, store, where, log)
            if started and address is not None:
                _watch(address, driver)
            return driver.loop(once, idle_exit_s, only)
        finally:
            if started:
                ray.shutdown()


def _watch(address: str, driver: "_Driver") -> None:
    """A thread probing the cluster's address every second. Ray's calls block for a minute, then end this
    process, when the cluster is killed: after `LOST_AFTER_S` without an answer the thread re-queues the
    running jobs, saying why, and ends the process itself (the OS releases the worker lock)."""
    def run() -> None:
        silent_since = None
        while True:
            time.sleep(1.0)
            if answers(address, 1.0):
                silent_since = None
                continue
            silent_since = silent_since or time.time()
            if time.time() - silent_since >= LOST_AFTER_S:
                n = driver.requeue_all(f"re-queued: the Ray cluster at {address} went away")
                driver.log(f"the Ray cluster at {address} went away (no answer for {LOST_AFTER_S:.0f} s); "
                           f"{n} running job(s) re-queued; stopping")
                driver.store.worker_gone(driver.pid)
                os._exit(3)

    threading.Thread(target=run, name="nsa-ray-watch", daemon=True).start()


def host_port(address: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` or `ray://HOST:PORT`; `NSAError` for anything else."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise NSAError(f"not a Ray address: {address!r} (expected HOST:PORT, ray://HOST:PORT or auto)")
    return host.strip("[]"), int(port)


def answers(address: str, timeout_s: float) -> bool:
    """Something accepts a TCP connection at the address within `timeout_s`."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _connect(address: str | None) -> str:
    import ray
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    if address is not None:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # ~/.ray/auth_token, as `ray status`

    env = {k: os.environ[k] for k in ENV_VARS if os.environ.get(k)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    options = dict(log_to_driver=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, **options)
            return "a local Ray instance"
        ray.init(address=address, **options)
    except Exception as err:  # noqa: BLE001 - Ray raises many kinds; the user needs the address and the reason
        raise NSAError(f"cannot connect to the Ray cluster at {address or 'a new local instance'}: "
                       f"{type(err).__name__}: {str(err)[:300]}") from None
    return address


class _Driver:
    def __init__(self, executor, store: JobStore, where: str, log: Callable[[str], None]):
        import ray

        self.ray, self.executor, self.store, self.where, self.log = ray, executor, store, where, log
        try:  # what to probe when a Ray call fails: the Ray Client server, or the GCS
            self.address = where if str(where).startswith("ray://") else ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 - an older or client-mode context without it
            self.address = None
        self.pid = os.getpid()
        self.running: dict[str, _Running] = {}
        self.sink = ray.remote(ray_task.ProgressSink).options(num_cpus=0).remote()
        self.task = ray.remote(ray_task.run_on_node)
        self.total: dict = {}
        self.largest: dict = {}
        self.checked = 0.0
        self.put_refs: dict[str, object] = {}  # shared entry key -> ObjectRef of its exported data
        self.index_path = cache_dir() / "ray" / "entries.json"
        self.done = 0
        self.sizes: dict[str, int | None] = {}  # model -> bytes of its weights, looked up once per driver

    # --- the loop -----------------------------------------------------------------------------------------
    def loop(self, once: bool, idle_exit_s: float | None, only: set[str] | None) -> int:
        from ray.exceptions import RayError

        stopping = {"flag": False}

        def _stop(signum, frame):  # noqa: ARG001 - SIGTERM: stop; the running jobs are re-queued
            stopping["flag"] = True

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _stop) if main else None
        self.log(f"ray worker {self.pid} started on {self.where}; store {self.store.path}")
        idle_since, beat = time.time(), 0.0
        try:
            while not stopping["flag"]:
                if time.time() - beat >= BEAT_S:
                    self._beat()
                    beat = time.time()
                try:
                    self._step(only)
                except (RayError, ConnectionError) as err:  # a Ray call failed: is the cluster still there?
                    self._check_alive(err)
                    self.log(f"a Ray call failed ({type(err).__name__}: {str(err)[:200]}); carrying on")
                if self.running:
                    idle_since = time.time()
                    continue
                if not self._queued(only) and (once or (idle_exit_s is not None
                                                         and time.time() - idle_since > idle_exit_s)):
                    break
                time.sleep(POLL_S)
        except ClusterLost as err:
            n = self.requeue_all(f"re-queued: the Ray cluster at {self.where} went away ({err})")
            message = (f"the Ray cluster at {self.where} went away ({err}); {n} running job(s) re-queued: start a "
                       "worker again when the cluster is back, or use --executor local")
            self.log(message)
            raise NSAError(message) from None
        except BaseException as err:
            why = "it was interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {err}"
            self.requeue_all(f"re-queued: the ray worker stopped ({why[:200]})", cancel=True)
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            self.store.worker_gone(self.pid)
        self.requeue_all("re-queued: the ray worker was stopped", cancel=True)
        return self.done

    def _step(self, only: set[str] | None) -> None:
        recover(self.store, me=self.pid)
        self._resources()
        self._progress()
        self._cancels()
        self._collect()
        self._dispatch(only)

    def _queued(self, only: set[str] | None) -> list[Job]:
        """Queued jobs, oldest first (only those in `only` when given)."""
        return [j for j in reversed(self.store.list("queued")) if only is None or j.id in only]

    def _beat(self) -> None:
        self.store.worker_beat(self.pid)
        for job_id, run in self.running.items():
            if self.store.replaced or self.store.get(job_id) is None:  # jobs.sqlite deleted: keep the job on record
                self.store.restore_running(run.job, self.pid)
            self.store.update(job_id)  # the job's heartbeat

    # --- the cluster's capacity -----------------------------------------------------------------------------
    def _resources(self, force: bool = False) -> None:
        if not force and time.time() - self.checked < RESOURCES_EVERY_S:
            return
        self.checked = time.time()
        try:
            nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        except Exception as err:  # noqa: BLE001
            raise ClusterLost(f"{type(err).__name__}: {str(err)[:200]}") from None
        if not nodes:
            raise ClusterLost("no node is alive")
        self.total = {k: sum(n["Resources"].get(k, 0.0) for n in nodes) for k in ("CPU", "GPU", "memory")}
        self.largest = {k: max(n["Resources"].get(k, 0.0) for n in nodes) for k in ("CPU", "GPU", "memory")}

    def demand(self, spec: dict) -> dict:
        """The Ray resources of a job: 1 GPU for a CUDA device; CPUs (= torch threads) from `cpus_per_job`,
        else 1 per started 2 GiB of weights for CPU jobs and 1 for GPU jobs; memory 2.5 × the weights + 1.5 GiB
        (a scheduling reservation, capped at the largest node). Unknown model size (a hub id not cached on this
        machine): 1 CPU, no memory reservation."""
        gpus = 1 if str(spec.get("device", "cpu")).startswith("cuda") else 0
        weights = self._model_bytes(spec["model"])
        cpus = self.executor.cpus_per_job or (1 if gpus or not weights else math.ceil(weights / (2 * GIB)))
        out = {"CPU": float(min(cpus, max(self.largest.get("CPU", 1.0), 1.0))), "GPU": float(gpus)}
        if weights:
            out["memory"] = float(min(int(2.5 * weights) + BASE_MEMORY, self.largest.get("memory", 0.0)))
        return out

    def _model_bytes(self, model: str) -> int | None:
        if model not in self.sizes:
            self.sizes[model] = model_bytes(model)
        return self.sizes[model]

    def _fits(self, demand: dict) -> bool:
        used = {k: sum(r.demand.get(k, 0.0) for r in self.running.values()) for k in demand}
        return all(used[k] + v <= self.total.get(k, 0.0) + 1e-9 for k, v in demand.items())

    # --- sending jobs --------------------------------------------------------------------------------------
    def _dispatch(self, only: set[str] | None) -> None:
        full: set[tuple] = set()  # demands that did not fit this round: the same ones are not tried again
        for job in self._queued(only):
            demand = self.demand(job.spec)
            if tuple(sorted(demand.items())) in full:
                continue
            if demand["GPU"] > self.largest.get("GPU", 0.0):
                if self.store.claim(job.id, self.pid):
                    self.store.finish(job.id, "failed", message=f"needs a GPU (device {job.spec.get('device')}) but "
                                      f"no node of the Ray cluster at {self.where} has one",
                                      error=f"device {job.spec.get('device')}: the Ray cluster at {self.where} has "
                                            "no GPU; use device cpu or add a GPU node")
                continue
            if not self._fits(demand):
                full.add(tuple(sorted(demand.items())))
                continue
            problem = self._too_big(job)
            if not self.store.claim(job.id, self.pid):
                continue
            if problem:
                self.store.finish(job.id, "failed", message=f"failed: {problem}", error=problem)
                continue
            self._send(job, demand)

    def _too_big(self, job: Job) -> str | None:
        """A run folder too large to send back (staging mode): masks alone take a byte per weight."""
        weights = self._model_bytes(job.spec["model"]) or 0
        if self.executor.shared_cache or weights // 4 <= RETURN_LIMIT:
            return None
        return (f"the model's run folder would exceed the {RETURN_LIMIT / 1e9:.1f} GB a Ray task sends back (its masks "
                "alone take a byte per weight): give the nodes a shared cache (--shared-cache)")

    def _send(self, job: Job, demand: dict) -> None:
        options = {"num_cpus": demand["CPU"], "num_gpus": demand["GPU"], "max_retries": self.executor.max_retries,
                   "retry_exceptions": False, "name": f"nsa-job-{job.id}"}
        if demand.get("memory"):
            options["memory"] = demand["memory"]
        settings = {"threads": max(1, int(demand["CPU"])), "shared_cache": self.executor.shared_cache,
                    "cache_dir": str(cache_dir()), "node_cache": self.executor.node_cache,
                    "custom_tasks": saved_custom(), "return_limit": RETURN_LIMIT}
        shipped = [] if self.executor.shared_cache else self._shipped(job.spec["model"])
        ref = self.task.options(**options).remote(job.spec, job.id, settings, self.sink, shipped)
        self.running[job.id] = _Running(job=self.store.get(job.id) or job, ref=ref, demand=demand, sent=time.time())
        self.store.update(job.id, stage="starting", message=f"sent to the Ray cluster ({self.where})")

    def _shipped(self, model: str) -> list:
        """ObjectRefs of the shared cache entries recorded for `model`, newest first, up to `SHIP_LIMIT` bytes."""
        out, total = [], 0
        for key in reversed(self._index().get(model, [])):
            entry = ray_task.shared_entry(cache_dir(), key)
            manifest = entry.manifest()
            if manifest is None:
                continue
            size = sum(f.get("size", 0) for f in manifest["files"].values())
            if total + size > SHIP_LIMIT:
                continue
            if key not in self.put_refs:
                try:
                    self.put_refs[key] = self.ray.put({"key": key, **entry.export()})
                except NSAError as err:
                    self.log(f"not sending {key}: {err}")
                    continue
            out.append(self.put_refs[key])
            total += size
        return out

    # --- what the tasks say --------------------------------------------------------------------------------
    def _progress(self) -> None:
        try:
            events = self.ray.get(self.sink.drain.remote(), timeout=30)
        except Exception as err:  # noqa: BLE001 - the actor or the cluster is gone
            self._check_alive(err)
            self.sink = self.ray.remote(ray_task.ProgressSink).options(num_cpus=0).remote()
            return
        for job_id, token, kind, data in events:
            run = self.running.get(job_id)
            if run is None:
                continue
            if kind == "start":
                run.token, run.starts, run.host = token, run.starts + 1, data["host"]
                self.store.place(job_id, "ray", host=data["host"], node=data["node"], pid=data["pid"],
                                 gpus=data["gpus"], attempt=run.starts)
                again = f" (attempt {run.starts}: the previous Ray worker died)" if run.starts > 1 else ""
                self.store.update(job_id, stage="starting", progress=0.0,
                                  message=f"running on {data['host']} (pid {data['pid']}"
                                          f"{', GPU ' + data['gpus'] if data['gpus'] else ''}){again}")
            elif token == run.token:
                run.stage = data["stage"] or run.stage
                self.store.update(job_id, **data)

    def _cancels(self) -> None:
        now = time.time()
        for job_id, run in self.running.items():
            job = self.store.get(job_id)
            if job is not None and job.cancel_requested and run.cancel_at is None:
                run.cancel_at = now
                self.ray.cancel(run.ref, force=False)  # KeyboardInterrupt in the task: it cleans up
            elif run.cancel_at is not None and not run.forced and now - run.cancel_at > KILL_GRACE_S:
                run.forced = True
                self.ray.cancel(run.ref, force=True)  # kill its worker process

    def _collect(self) -> None:
        if not self.running:
            return
        refs = {run.ref: run for run in self.running.values()}
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=POLL_S)
        if ready:
            self._progress()  # the last events before the outcome
        for ref in ready:
            run = refs[ref]
            del self.running[run.job.id]
            status = self._finish(run)
            if self.executor.shared_cache and status != "done":
                clean_partial(run.job.id)  # what a killed task left in the shared cache (it has ended)
            self.done += 1
            self.log(f"job {run.job.id}: {status} on {run.host or '?'} after {time.time() - run.sent:.1f} s")

    def _finish(self, run: _Running) -> str:
        from ray import exceptions as rx

        job_id = run.job.id
        try:
            result = self.ray.get(run.ref)
        except (rx.TaskCancelledError, rx.RayTaskError) as err:
            cause = err.cause if isinstance(err, rx.RayTaskError) else None
            if run.cancel_at is not None or isinstance(cause, KeyboardInterrupt):
                self.store.finish(job_id, "cancelled", message=f"cancelled during {run.stage}")
                return "cancelled"
            message, error = describe_failure(cause if cause is not None else err, run.stage)
            remote = ANSI.sub("", str(err))[-20000:]  # Ray's text of the remote traceback, without its colours
            self.store.finish(job_id, "failed", message=message, error=error,
                              traceback=f"Traceback of the Ray task on {run.host or '?'}:\n{remote}")
            return "failed"
        except rx.RayError as err:
            if run.cancel_at is not None:
                self.store.finish(job_id, "cancelled", message=f"cancelled during {run.stage}")
                return "cancelled"
            self._check_alive(err)
            why = f"its Ray worker or node died {run.starts or 1} time(s) ({type(err).__name__})"
            self.store.finish(job_id, "failed", message=f"failed during {run.stage}: {why}",
                              error=f"{why} during stage {run.stage!r}, after {self.executor.max_retries} "
                                    f"retries: {str(err)[:1000]}")
            return "failed"
        try:
            folder = self._install(job_id, run.job.spec, result)
        except NSAError as err:
            self.store.finish(job_id, "failed", message=f"failed receiving the run: {err}", error=str(err))
            return "failed"
        self.store.finish(job_id, "done", message=f"run folder {folder} (computed on {result['host']} in "
                                                  f"{result['seconds']:.1f} s)")
        return "done"

    def _install(self, job_id: str, spec: dict, result: dict) -> Path:
        entry = run_entry(job_id)
        if result["mode"] == "shared":
            problems = entry.problems(deep=True)
            if problems:
                raise NSAError(f"the run folder the task wrote into the shared cache does not verify here: "
                               f"{problems[0]} (is {cache_dir()} the same folder on every node?)")
            return entry.folder
        entry.receive(result["run"])
        added = []
        for key, data in result.get("entries", {}).items():
            shared = ray_task.shared_entry(cache_dir(), key, data["manifest"].get("format", 1))
            if not shared.complete():
                shared.receive(data)
            added.append(key)
        if added:
            index = self._index()
            keys = [k for k in index.get(spec["model"], []) if k not in added] + added
            index[spec["model"]] = keys
            write_json(self.index_path, index)
        return entry.folder

    def _index(self) -> dict:
        try:
            data = read_json(self.index_path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # --- losing the cluster, stopping ------------------------------------------------------------------------
    def _check_alive(self, err: BaseException) -> None:
        """Raise `ClusterLost` when the cluster no longer answers (after `err` from a Ray call). Its address is
        probed first: Ray's own calls wait a minute for a GCS that was killed."""
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if self.address and not answers(self.address, 1.0):
            raise ClusterLost(why)
        try:
            self._resources(force=True)
        except ClusterLost:
            raise ClusterLost(why) from None

    def requeue_all(self, message: str, cancel: bool = False) -> int:
        n = 0
        for job_id, run in list(self.running.items()):
            if cancel:
                try:
                    self.ray.cancel(run.ref, force=True)
                except Exception:  # noqa: BLE001 - the cluster may be gone already
                    pass
            job = self.store.get(job_id)
            if job is not None and job.status == "running":
                self.store.requeue(job_id, message)
                n += 1
            self.running.pop(job_id, None)
        return n


def model_bytes(model: str) -> int | None:
    """Bytes of the model's weight files on this machine (demo, local folder, GGUF file, or a hub snapshot in
    the local Hugging Face cache), None when unknown."""
    try:
        if model == "demo":
            folder = DEMO_MODEL_DIR
        elif looks_local(model):
            path = Path(model).expanduser()
            if path.is_file():
                return path.stat().st_size
            folder = path
        else:
            from huggingface_hub import try_to_load_from_cache

            config = try_to_load_from_cache(model, "config.json")
            if not isinstance(config, str):
                return None
            folder = Path(config).parent
        size = sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
        return size or None
    except OSError:
        return None


def cluster_nodes(address: str, timeout_s: float = 1.0) -> list[dict]:
    """The nodes of the cluster at `address` (host:port of its GCS) without joining it as a driver:
    [{"host", "ip", "node_id", "alive", "total", "free"}] with CPU, GPU and memory (bytes). Uses Ray's GCS client
    (the same calls as `ray status`); raises what Ray raises."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # no C++ retry warnings on the app's console
    logging.getLogger("ray").setLevel(logging.ERROR)
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray._raylet import GcsClient
    from ray.autoscaler.v2.sdk import get_cluster_resource_state

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    client = GcsClient(address=address)
    info = client.get_all_node_info(timeout=timeout_s)
    free = {n.node_id: dict(n.available_resources) for n in get_cluster_resource_state(client).node_states}
    out = []
    for node_id, node in info.items():
        total = dict(node.resources_total)
        raw = node.node_id
        out.append({"host": node.node_manager_hostname, "ip": node.node_manager_address, "node_id": raw.hex(),
                    "alive": node.state == 0,
                    "total": {k: total.get(k, 0.0) for k in ("CPU", "GPU", "memory")},
                    "free": {k: free.get(raw, {}).get(k, 0.0) for k in ("CPU", "GPU", "memory")}})
    return out
