"""What runs on a Ray node: one job (`run_on_node`, the Ray task) and the actor carrying progress to the driver.

The task runs `nsa.jobs.pipeline.run_job` with `NSA_CACHE_DIR` pointing at

- the shared cache (`shared_cache`: every node sees the driver's `NSA_CACHE_DIR` at the same path): the run
  folder is built there, atomically, by the pipeline itself; the task returns where it is;
- else the node's staging cache (`<tmp>/nsa-ray-<uid>/cache`, kept between tasks on that node): before the
  run, the shared cache entries the driver sent (dense evaluations, NSA dense statistics, gradient words,
  calibration sets of the same model) are put there unless the node has them; after it, the task returns the
  complete run folder (`Entry.export`: manifest + bytes of every file) and every shared entry it created, and
  removes the run from the node. The driver checks every file against the task's manifest before the folder
  is swapped into its cache (`Entry.receive`).

A killed task leaves at most a hidden half-built folder in the node's cache, which the retry's `run_job`
removes before it starts; nothing half-written ever reaches the driver's cache.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from nsa.artifacts import MANIFEST, Entry
from nsa.atomic import write_json
from nsa.errors import NSAError
from nsa.jobs.pipeline import run_job
from nsa.jobs.runs import run_entry
from nsa.jobs.spec import JobSpec
from nsa.jobs.worker import ProgressWriter

SHARED_KINDS = ("calibration", "dense-eval", "nsa-dense", "words")  # shared cache entries that travel


class ProgressSink:
    """A Ray actor (0 CPUs): tasks `put` events without waiting, the driver `drain`s them all in one call."""

    def __init__(self):
        self.events: list = []

    def put(self, event) -> None:
        self.events.append(event)

    def drain(self) -> list:
        out, self.events = self.events, []
        return out


class _ToSink:
    """Stands in for the store behind a `ProgressWriter`: its updates become events for the driver."""

    def __init__(self, sink, token: str):
        self.sink, self.token = sink, token

    def update(self, job_id: str, stage=None, progress=None, message=None) -> None:
        self.sink.put.remote((job_id, self.token, "progress", {"stage": stage, "progress": progress,
                                                               "message": message}))


def default_node_cache() -> Path:
    return Path(tempfile.gettempdir()) / f"nsa-ray-{os.getuid()}" / "cache"


def run_on_node(spec: dict, run_id: str, settings: dict, sink, shipped: list) -> dict:
    """The Ray task of one job. `settings`: threads, shared_cache, cache_dir, node_cache, custom_tasks,
    return_limit. `shipped`: ObjectRefs of exported shared entries ({"key": "kind/key", ...}). Returns
    {"host", "seconds", "mode"} plus, in staging mode, "run" (the exported run folder) and "entries"."""
    import ray
    import torch

    token = uuid.uuid4().hex[:12]  # this attempt: a retry's events replace a killed attempt's
    sink.put.remote((run_id, token, "start", {"host": socket.gethostname(), "pid": os.getpid(),
                                              "node": ray.get_runtime_context().get_node_id(),
                                              "gpus": ",".join(str(g) for g in ray.get_gpu_ids())}))
    torch.set_num_threads(max(1, int(settings["threads"])))
    if str(spec.get("device", "cpu")).startswith("cuda"):
        spec = dict(spec, device="cuda")  # Ray makes the GPU it assigned the only visible one: cuda:0
    shared = bool(settings["shared_cache"])
    cache = Path(settings["cache_dir"] if shared else settings.get("node_cache") or default_node_cache())
    out = {"host": socket.gethostname(), "mode": "shared" if shared else "staging"}
    with _cache_at(cache):
        sent = set()
        if not shared:
            before = _shared_keys(cache)
            for data in ray.get(list(shipped)):
                sent.add(data["key"])
                _materialize(cache, data)
            if settings.get("custom_tasks"):
                write_json(cache / "tasks" / "custom.json", settings["custom_tasks"])
        writer = ProgressWriter(_ToSink(sink, token), run_id, {"name": "starting"}, watch_parent=False)
        started = time.time()
        run_job(JobSpec.stored(spec), progress=writer, run_id=run_id)
        out["seconds"] = time.time() - started
        if shared:
            return out
        entry = run_entry(run_id)
        try:
            size = sum(f["size"] for f in entry.manifest()["files"].values())
            if size > settings["return_limit"]:
                raise NSAError(f"the run folder is {size / 1e9:.1f} GB, more than the {settings['return_limit'] / 1e9:.1f}"
                               " GB a task sends back through Ray: give the nodes a shared cache (--shared-cache, "
                               "NSA_CACHE_DIR at the same path on every node)")
            out["run"] = entry.export()
            out["entries"] = {key: shared_entry(cache, key).export() for key in sorted(_shared_keys(cache) - before - sent)}
        finally:
            shutil.rmtree(entry.folder, ignore_errors=True)  # the node does not keep runs
    return out


@contextlib.contextmanager
def _cache_at(cache: Path):
    """`NSA_CACHE_DIR` is `cache` while the job runs (Ray reuses this process for later tasks: restored after)."""
    old = os.environ.get("NSA_CACHE_DIR")
    os.environ["NSA_CACHE_DIR"] = str(cache)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NSA_CACHE_DIR", None)
        else:
            os.environ["NSA_CACHE_DIR"] = old


def shared_entry(cache: Path, key: str, format: int | None = None) -> Entry:
    """The shared entry "kind/key" under `cache`, of `format` (default: the one its manifest says)."""
    kind = key.split("/", 1)[0]
    if format is None:
        format = (Entry(cache / key, kind).manifest() or {}).get("format", 1)
    return Entry(cache / key, kind, format)


def _shared_keys(cache: Path) -> set[str]:
    """"kind/key" of the shared entries in `cache` that have a manifest (complete)."""
    out = set()
    for kind in SHARED_KINDS:
        folder = cache / kind
        if folder.is_dir():
            out |= {f"{kind}/{p.name}" for p in folder.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file()}
    return out


def _materialize(cache: Path, data: dict) -> None:
    """Put a shared entry the driver sent into the node's cache, unless the node has it complete."""
    entry = shared_entry(cache, data["key"], data["manifest"].get("format", 1))
    if not entry.complete():
        entry.receive(data)
