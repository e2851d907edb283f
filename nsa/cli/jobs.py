"""Jobs from the command line, sharing the store with the app: run, submit, jobs, cancel, worker, runs."""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import torch
from tqdm import tqdm

from nsa.cli.executor_args import add_executor_arguments, executor_from_args
from nsa.jobs import runs
from nsa.jobs.spec import load_spec
from nsa.jobs.store import JobStore
from nsa.jobs.submit import submit
from nsa.jobs.worker import BEAT_S, job_threads, recover, run_in_process


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a job spec in the foreground with a progress bar")
    p.add_argument("spec", help="job spec (YAML), e.g. examples/demo.yaml")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("submit", help="queue a job spec for the background worker; prints its id")
    p.add_argument("spec", help="job spec (YAML)")
    p.add_argument("--no-worker", action="store_true", help="do not start a background worker")
    add_executor_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list jobs: id, status, stage, progress")
    p.add_argument("--status", choices=["queued", "running", "done", "failed", "cancelled"])
    p.add_argument("--show", metavar="ID", help="one job in full, with its error and traceback")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("id", help="job id (a unique prefix is enough)")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("worker", help="run queued jobs (one worker per machine)")
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S",
                   help="exit after S seconds with an empty queue (default: run until stopped)")
    add_executor_arguments(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("runs", help="list run folders with their size; --delete ID removes one")
    p.add_argument("--delete", metavar="ID", help="remove this run folder")
    p.add_argument("--verify", action="store_true", help="re-check every artifact's checksum")
    p.set_defaults(func=cmd_runs)


def cmd_submit(args) -> int:
    executor = executor_from_args(args)
    if not args.no_worker:
        executor.check()
    sub = submit(load_spec(args.spec), start_worker=not args.no_worker, executor=executor)
    print(sub.run_id)
    print(f"status: {sub.status}" + (" (complete, verified)" if sub.already_done else ""), file=sys.stderr)
    if sub.problems and sub.problems != ["missing"]:
        print(f"the old run folder was bad ({sub.problems[0]}): it is recomputed", file=sys.stderr)
    if sub.worker_pid:
        print(f"started a background worker (pid {sub.worker_pid})", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    store = JobStore()
    sub = submit(load_spec(args.spec), store, start_worker=False)  # a corrupted run is recomputed
    job_id = sub.run_id
    if sub.already_done:
        print(f"{job_id}: already computed -> {runs.run_dir(job_id)}")
        return 0
    while True:
        if store.claim(job_id, os.getpid()):
            status = _run_here(store, job_id)
            break
        job = store.get(job_id)
        print(f"{job_id} is {job.status} in another process (pid {job.worker_pid}); following it", file=sys.stderr)
        status = _follow(store, job_id)
        if status != "queued":  # finished over there; "queued" = that process died and its job was re-queued
            break
    job = store.get(job_id)
    if status == "done":
        print(f"{job_id}: done -> {runs.run_dir(job_id)}")
        return 0
    print(f"{job_id}: {job.status}: {job.error or job.message}", file=sys.stderr)
    return 1


def _run_here(store, job_id: str) -> str:
    """Run the claimed job in this process, beating its heartbeat from a thread (loading can be silent)."""
    torch.set_num_threads(job_threads(torch.get_num_threads()))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT_S):
            store.worker_beat(os.getpid(), job_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")

    shown = {"t": 0.0, "stage": None}

    def show(event) -> None:  # redraw at most 4 times a second (events come once per batch or layer)
        now = time.time()
        if event.stage == shown["stage"] and now - shown["t"] < 0.25 and event.fraction < 1.0:
            return
        shown.update(t=now, stage=event.stage)
        bar.n = round(100 * event.fraction, 1)
        bar.set_description(event.stage)
        bar.set_postfix_str(event.message[:60], refresh=False)
        bar.refresh()

    try:
        return run_in_process(store, store.get(job_id), also=show, child=False)
    finally:
        stop.set()
        bar.close()
        store.worker_gone(os.getpid())


def _follow(store, job_id: str) -> str:
    """Follow a job another process runs until it finishes; "queued" when that process died (recovered)."""
    bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}]")
    try:
        while True:
            recover(store)
            job = store.get(job_id)
            if job is None:
                return "deleted"
            bar.n = round(100 * job.progress, 1)
            bar.set_description(job.stage or job.status)
            bar.refresh()
            if job.status != "running":
                return job.status
            time.sleep(0.5)
    finally:
        bar.close()


def cmd_jobs(args) -> int:
    store = JobStore()
    if args.show:
        job = store.require(args.show)
        for key, value in job.to_dict().items():
            if key not in ("traceback", "spec"):
                print(f"{key}: {_fmt(key, value)}")
        print("spec: " + json.dumps(job.spec, sort_keys=True))
        place = store.placement(job.id)
        if place:
            print(f"ran on: {place['host']} ({place['executor']}, node {place['node'][:12]}, pid {place['pid']}"
                  f"{', GPU ' + place['gpus'] if place['gpus'] else ''}, attempt {place['attempt']})")
        if job.traceback:
            print(job.traceback)
        return 0
    jobs = store.list(args.status)
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'id':16}  {'status':9}  {'stage':12}  {'progress':>8}  {'created':19}  message")
    for job in jobs:
        print(f"{job.id:16}  {job.status:9}  {job.stage[:12]:12}  {100 * job.progress:7.1f}%  "
              f"{_fmt('created', job.created):19}  {(job.error or job.message).splitlines()[0][:80] if (job.error or job.message) else ''}")
    return 0


def _fmt(key: str, value):
    if key in ("created", "started", "finished", "heartbeat") and value:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return value


def cmd_cancel(args) -> int:
    job = JobStore().cancel(args.id)
    print(f"{job.id}: {job.status}" + (" (cancel requested; the worker stops it within seconds)"
                                       if job.status == "running" else ""))
    return 0


def cmd_worker(args) -> int:
    n = executor_from_args(args).serve(once=args.once, idle_exit_s=args.idle_exit, log=lambda m: print(m, flush=True))
    print(f"worker exiting after {n} job(s)", flush=True)
    return 0


def cmd_runs(args) -> int:
    if args.delete:
        runs.delete_run(args.delete)
        print(f"deleted run {args.delete}")
        return 0
    items = runs.list_runs(verify=args.verify)
    if not items:
        print(f"no runs under {runs.runs_dir()}")
        return 0
    print(f"{'id':16}  {'size':>9}  {'created':20}  {'ok':3}  spec")
    for r in items:
        spec = r.spec or {}
        prune = spec.get("prune") or {}
        what = f"{spec.get('model', '?')} {prune.get('method', '?')} {prune.get('sparsity', '?')} {prune.get('pattern', '')}"
        print(f"{r.id:16}  {_size(r.size):>9}  {r.created:20}  {'yes' if r.ok else 'NO':3}  {what}")
        for problem in r.problems:
            print(f"{'':16}  ! {problem}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
