"""The Ray executor vs the local worker on the same 8-run demo study, in one run: wall-time ratio and the
overhead per job of going through Ray.

    python bench/bench_ray.py [--shared-cache]

Each executor gets a fresh cache and its own worker process (`python -m nsa worker [--executor ray]`; Ray: a
local instance with one single-thread job per CPU of this machine). First two extra runs of the same study go
through it (untimed: imports, the forkserver or both Ray workers, the dense evaluation and calibration
entries), then the 8 runs are queued at once and timed until the last is done. Also printed: the cold figure
(from starting the worker to the last of the warm-up and the 8 runs), and per job the time from claim to
finish minus the pipeline's own time (`logs/job.log`'s "finished in"): the local worker's fork and load, and
for Ray the dispatch, the entries sent, the files sent back, checked and installed.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NSA_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nsa.jobs.executors import get_executor  # noqa: E402
from nsa.jobs.store import JobStore  # noqa: E402
from nsa.study import load_study, runner  # noqa: E402

STUDY = """\
name: bench-ray
base:
  model: demo
  prune: {{method: wanda, sparsity: 0.5}}
  calibration: {{source: demo-generic, nsamples: 16, seqlen: 128, seed: 0}}
  evaluate: {{tasks: [demo-reviews, demo-unseen, demo-facts], limit: 100}}
axes:
  method: [wanda, sparsegpt]
  sparsity: {sparsities}
"""
TIMED = [0.4, 0.5, 0.6, 0.7]  # x 2 methods = the 8 timed runs
WARMUP = [0.25]  # x 2 methods: one run per Ray worker


def _plan(folder: Path, name: str, sparsities: list[float]):
    path = folder / f"{name}.yaml"
    path.write_text(STUDY.format(sparsities=sparsities))
    return runner.plan(load_study(path))


def _wait(store: JobStore, ids: list[str], timeout: float = 1800) -> None:
    end = time.time() + timeout
    while time.time() < end:
        jobs = [store.get(i) for i in ids]
        bad = [j for j in jobs if j.status in ("failed", "cancelled")]
        if bad:
            raise SystemExit(f"job {bad[0].id} {bad[0].status}: {bad[0].error or bad[0].message}")
        if all(j.status == "done" for j in jobs):
            return
        time.sleep(0.1)
    raise SystemExit("timed out")


def _own_seconds(cache: Path, job_id: str) -> float:
    log = (cache / "runs" / job_id / "logs" / "job.log").read_text()
    return float(re.findall(r"finished in ([0-9.]+) s", log)[-1])


def measure(name: str, worker_args: list[str], folder: Path) -> dict:
    cache = folder / name / "cache"
    cache.mkdir(parents=True)
    os.environ["NSA_CACHE_DIR"] = str(cache)
    executor = get_executor(worker_args[1] if worker_args else "local")
    store = JobStore()
    env = dict(os.environ, NSA_JOB_THREADS="1", PYTHONPATH=str(ROOT))
    started = time.time()
    worker = subprocess.Popen([sys.executable, "-m", "nsa", "worker", *worker_args], cwd=ROOT, env=env,
                              stdout=open(folder / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
    try:
        warm = _plan(folder, f"{name}-warm", WARMUP)
        _wait(store, runner.submit(warm, store, start_worker=False, executor=executor))
        timed = _plan(folder, name, TIMED)
        t0 = time.time()
        ids = runner.submit(timed, store, start_worker=False, executor=executor)
        assert len(ids) == 8, len(ids)
        _wait(store, ids)
        wall = time.time() - t0
        cold = time.time() - started
    finally:
        worker.terminate()
        worker.wait(60)
    jobs = [store.get(i) for i in ids]
    overhead = [(j.finished - j.started) - _own_seconds(cache, j.id) for j in jobs]
    own = [_own_seconds(cache, j.id) for j in jobs]
    return {"wall": wall, "cold": cold, "overhead": overhead, "own": own}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-cache", action="store_true", help="Ray tasks write into the cache directly")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    ray_args = ["--executor", "ray", "--node-cache", str(folder / "node")]
    if args.shared_cache:
        ray_args.append("--shared-cache")
    local = measure("local", [], folder)
    ray = measure("ray", ray_args, folder)
    print(f"8-run demo study (wanda and sparsegpt x 4 sparsities, demo model, 3 tasks x 100 examples); "
          f"{os.cpu_count()} CPUs; 2 warm-up runs each; Ray: {'shared cache' if args.shared_cache else 'staging'}")
    print("| executor | 8 runs, wall (s) | cold: worker start to last run (s) | pipeline per job, median (s) "
          "| overhead per job, median [min-max] (s) |\n|---|---|---|---|---|")
    for name, r in (("local (1 worker, 1 thread)", local), (f"ray ({os.cpu_count()} single-thread workers)", ray)):
        o = r["overhead"]
        print(f"| {name} | {r['wall']:.1f} | {r['cold']:.1f} | {statistics.median(r['own']):.2f} | "
              f"{statistics.median(o):.2f} [{min(o):.2f}-{max(o):.2f}] |")
    print(f"\nwall-time ratio local / ray, 8 runs: {local['wall'] / ray['wall']:.2f}x (cold: "
          f"{local['cold'] / ray['cold']:.2f}x); Ray's extra overhead per job: "
          f"{statistics.median(ray['overhead']) - statistics.median(local['overhead']):+.2f} s (median)")
    for name, r, workers in (("local", local, 1), ("ray", ray, os.cpu_count())):
        print(f"{name}: sum of the 8 jobs' pipeline time / wall = {sum(r['own']) / r['wall']:.2f} "
              f"(of {workers} possible)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
