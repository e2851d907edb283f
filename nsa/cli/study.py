"""`python -m nsa study STUDY.yaml`: run a grid of jobs through the shared queue, and show its results.

    python -m nsa study studies/demo.yaml --dry-run       # the runs it would do, and how many
    python -m nsa study studies/demo.yaml                 # queue them, follow progress (Ctrl-C stops; re-run resumes)
    python -m nsa study studies/demo.yaml --results --csv results.csv
"""
from __future__ import annotations

import argparse
import sys
import time

import pandas as pd
from tqdm import tqdm

from nsa.cli.executor_args import add_executor_arguments, executor_from_args
from nsa.errors import NSAError
from nsa.jobs.worker import running_worker, worker_log
from nsa.study import findings, load_study, runner
from nsa.study.breakpoint import table_breakpoints
from nsa.study.results import write_csv


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("study", help="run a study (a grid of jobs) or show its results",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="the study file (YAML: base spec + axes), e.g. studies/demo.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their count; run nothing")
    p.add_argument("--yes", action="store_true", help="confirm a grid larger than the run limit")
    p.add_argument("--max-runs", type=int, metavar="N", help="the run limit (default: the file's max_runs or 200)")
    p.add_argument("--results", action="store_true", help="show the results table of the finished runs")
    p.add_argument("--csv", metavar="FILE", help="with --results: also write the table as CSV")
    p.add_argument("--here", action="store_true",
                   help="run the study's jobs in this process, one after another (libraries and model loaded once; "
                        "faster for many small runs) instead of in a background worker")
    p.add_argument("--no-worker", action="store_true",
                   help="only queue the runs and follow them; do not start a worker (one is already running)")
    p.add_argument("--poll", type=float, default=1.0, metavar="S", help="seconds between progress updates")
    add_executor_arguments(p)
    p.set_defaults(func=run_study_command)


def run_study_command(args: argparse.Namespace) -> int:
    if args.max_runs is not None and args.max_runs < 1:
        raise NSAError(f"--max-runs must be a positive integer, got {args.max_runs}")
    if args.csv and not args.results:
        raise NSAError("--csv writes the results table: use it with --results")
    executor = executor_from_args(args)
    if args.here and executor.name != "local":
        raise NSAError("--here runs the jobs in this process: it cannot be combined with --executor ray")
    study = load_study(args.study)
    if args.max_runs is not None:
        study.max_runs = args.max_runs
    plan = runner.plan(study, yes=args.yes or args.results or args.dry_run)
    if args.results:
        return _results(plan, args.csv)
    if args.dry_run:
        _print_plan(plan)
        return 0
    if not args.no_worker and plan.to_run:
        executor.check()  # an unreachable cluster is named now, in seconds
    return _run(plan, here=args.here, start_worker=not args.no_worker, poll=args.poll, executor=executor)


def _print_plan(plan) -> None:
    width = max((len(r.run_id) for r in plan.runs), default=6)
    print(f"{'#':>4}  {'run':<{width}}  {'status':<9}  grid point")
    for i, run in enumerate(plan.runs, start=1):
        status = "finished" if run.run_id in plan.finished else "to run"
        same = f"  (same run as {len(run.also)} other grid point(s))" if run.also else ""
        print(f"{i:>4}  {run.run_id:<{width}}  {status:<9}  {run.label()}{same}")
    print(runner.plan_summary(plan))


def _run(plan, here: bool, start_worker: bool, poll: float, executor) -> int:
    print(runner.plan_summary(plan), file=sys.stderr)
    if not plan.to_run:
        print("every run is finished; see the results with --results", file=sys.stderr)
        return 0
    other = running_worker() if start_worker and not here else None
    runner.submit(plan, start_worker=start_worker and not here, executor=executor)
    if other and other["executor"] != executor.name:
        print(f"note: a {other['executor']} worker (pid {other['pid']}) already runs the queue: the study's runs go "
              f"to it, not to {executor.describe()} (stop it and run this again to change)", file=sys.stderr)
    reported: set[str] = set()
    bar = tqdm(total=len(plan.runs), desc=f"study {plan.study.name}", unit="run", file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} runs [{elapsed}<{remaining}] {postfix}")
    bar.n = len(plan.finished)

    def on_event(run, event) -> None:
        bar.n = len(plan.finished) + min(max(float(event.fraction), 0.0), 1.0)
        bar.set_postfix_str(f"{run.label()} | {event.stage}", refresh=False)
        bar.refresh()

    def on_run(run, status) -> None:
        if status != "done":
            reported.add(run.run_id)
            job = runner.job_of(run)
            tqdm.write(f"run {run.run_id} ({run.label()}) {status}: {job.error or job.message if job else ''}",
                       file=sys.stderr)

    try:
        if here:
            runner.run_here(plan, on_event=on_event, on_run=on_run)
        while True:  # follow what runs elsewhere (the worker; or another process's share of the study)
            state = runner.progress(plan)
            bar.n = state.done + state.partial
            bar.set_postfix_str(state.short())
            for run_id, message in state.failures.items():
                if run_id not in reported:
                    reported.add(run_id)
                    tqdm.write(f"run {run_id} failed: {message}", file=sys.stderr)
            if state.active == 0:
                break
            if start_worker and not here and runner.stalled(state):
                bar.close()
                reasons = runner.waiting_reasons(plan)
                print(f"\nstudy {plan.study.name}: {state.summary()}; no worker is running"
                      + (f" ({reasons[0]})" if reasons else "") + ".", file=sys.stderr)
                for title, ids in (("finished", plan.finished), ("not finished", set(plan.ids) - plan.finished)):
                    labels = [r.label() for r in plan.runs if r.run_id in ids]
                    more = f" … and {len(labels) - 10} more" if len(labels) > 10 else ""
                    print(f"  {title}: {'; '.join(labels[:10]) or 'none'}{more}", file=sys.stderr)
                print("Run the same command again to resume (finished runs are reused), or with --executor local to "
                      f"run the rest on this machine; the worker's log: {worker_log()}", file=sys.stderr)
                return 3
            time.sleep(poll)
    except KeyboardInterrupt:
        bar.close()
        stopped = runner.stop(plan)
        state = runner.progress(plan)
        print(f"\nstopped: {state.done} of {state.total} runs finished, {stopped} cancelled; run the same "
              "command again to resume (finished runs are reused)", file=sys.stderr)
        return 130
    bar.close()
    print(f"study {plan.study.name}: {state.summary()}", file=sys.stderr)
    print(f"results: python -m nsa study {plan.study.path} --results [--csv FILE]", file=sys.stderr)
    return 1 if state.failed or state.cancelled else 0


def _results(plan, csv_path: str | None) -> int:
    table = runner.study_table(plan)
    print(f"study {plan.study.name}: {len(plan.finished)} of {len(plan.runs)} runs finished, {len(table)} rows")
    if table.empty:
        print("no finished run yet: run the study first (python -m nsa study FILE)")
        return 0
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30,
                           "display.float_format", "{:.3f}".format):
        print(table.drop(columns=["run_id", "model", "pattern", "nsamples", "seqlen"]).to_string(index=False))
        bps = table_breakpoints(table)
        if not bps.empty:
            print("\nsharp dropping point (two-segment fit of accuracy vs sparsity; 95% interval over seeds):")
            print(bps[["method", "source", "task", "breakpoint", "ci_low", "ci_high", "n_seeds", "slope_left",
                       "slope_right"]].to_string(index=False))
        for title, frame in (("calibration set effect (drop A − drop B, paired)", findings.calibration_effect(table)),
                             ("sentiment vs other tasks (drop difference, paired per run)",
                              findings.group_effect(table)),
                             ("the same, only tasks the dense model does above chance",
                              findings.group_effect(table, competent_only=True))):
            print(f"\n{title}:")
            print(frame.to_string(index=False) if not frame.empty else f"  n/a: {frame.attrs.get('note')}")
    if csv_path:
        print(f"\nwrote {write_csv(table, csv_path)}")
    return 0
