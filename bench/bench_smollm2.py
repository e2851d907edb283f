"""SmolLM2-135M-Instruct (the Q4_1 GGUF, converted once to float32): pruning, evaluation and the app's default job,
on the CPU. One run; ratios are measured within it.

1. Pruning: C4 calibration (64 x 512 tokens, seed 0), unstructured 50 %. Each method runs in a fresh subprocess
   (so its peak RSS is its own): load the model, time two dense forward passes of the calibration set (one row at
   a time, lm_head included: the same measure as `bench/bench_prune.py`), then prune; the ratio is prune time /
   that dense time, both in the same process one after the other. With `--dense-after` the two passes are timed
   again after pruning (same FLOPs: the masked weights are still dense tensors) and the mean of both is used.
2. Evaluation: SST-2 with the "review" prompt (`PromptConfig(template="review")`), tokens/s at the default batch
   size vs batch 1 on `--limit` examples (interleaved repeats, best of each; the harness's own token count).
3. The job the Run page launches for a real model with its defaults (wanda 50 % unstructured, C4 32 x 128 seed 0,
   SST-2 limit 200, review prompt, NSA on SST-2 with learned words and default options) through
   `nsa.jobs.pipeline.run_job`, in a fresh subprocess whose NSA_CACHE_DIR is a new temporary folder holding only
   the converted model (symlinked), so nothing else (calibration, dense evaluation, NSA's dense statistics, the
   harness files) is reused: total time and time per stage (from the progress callback's stage changes).

    NSA_DATA_DIR=../shared/data NSA_CACHE_DIR=../cache-smol python bench/bench_smollm2.py \
        [--nsamples 64] [--seqlen 512] [--methods magnitude,wanda,ria,sparsegpt,gblm] [--threads 1] \
        [--limit 100] [--job-threads 2] [--skip-prune] [--skip-eval] [--skip-job] [--json FILE]
    # smoke test: --nsamples 4 --seqlen 64 --limit 16 --skip-job
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NSA_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from nsa.jobs.worker import usable_cores  # noqa: E402  (after sys.path: the bench runs from a checkout)

GGUF = ROOT.parent / "shared" / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
METHODS = ("magnitude", "wanda", "ria", "sparsegpt", "gblm")
TARGETS = {"magnitude": 1.3, "wanda": 1.3, "ria": 1.3}
JOB_TARGET_S = 300.0


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- 1. pruning, one method per subprocess ------------------------------------------------------------------
def dense_forward_time(model, calib) -> float:
    """Two dense forward passes over the calibration set, one row at a time (as bench_prune.py measures)."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(2):
            for i in range(calib.shape[0]):
                model(input_ids=calib[i:i + 1], use_cache=False)
    return time.perf_counter() - t0


def prune_child(args) -> None:
    """In a fresh process: load, time two dense passes, prune with one method; one JSON line on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    from nsa.calibration import build_calibration
    from nsa.models import load_model
    from pruners import PruneConfig, prune

    model, tok = load_model(str(args.model))
    calib = build_calibration("c4", tok, args.nsamples, args.seqlen, seed=0).input_ids
    rss_loaded = rss_mb()
    load_before = loadavg()
    dense = dense_forward_time(model, calib)
    rss_dense = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    result = prune(model, calib, PruneConfig(method=args.child, sparsity=0.5, pattern="unstructured"))
    prune_s, prune_cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_prune = rss_mb()
    dense_after = dense_forward_time(model, calib) if args.dense_after else None
    pruned = sum(int(m.sum()) for m in result.masks.values())
    total = sum(m.numel() for m in result.masks.values())
    print("RESULT " + json.dumps({
        "method": args.child, "dense_s": dense, "dense_after_s": dense_after, "prune_s": prune_s,
        "prune_cpu_s": prune_cpu, "rss_loaded_mb": rss_loaded, "rss_after_dense_mb": rss_dense,
        "peak_rss_mb": rss_prune, "realised": pruned / total, "load_before": load_before,
        "load_after": loadavg(), "torch_threads": torch.get_num_threads()}), flush=True)


def bench_prune(args) -> list[dict]:
    # build (or read) the calibration set once here, so no child pays for tokenising C4
    import torch

    torch.set_num_threads(args.threads)
    from nsa.calibration import build_calibration
    from nsa.models import load_model

    t0 = time.perf_counter()
    _, tok = load_model(str(args.model))
    calib = build_calibration("c4", tok, args.nsamples, args.seqlen, seed=0)
    print(f"calibration c4 {args.nsamples}x{args.seqlen} seed 0 ({'cached' if calib.cached else 'built'} in "
          f"{time.perf_counter() - t0:.1f} s incl. model load); prune threads {args.threads}; "
          f"load average {loadavg()}", flush=True)
    print(f"{'method':<12}{'2 dense s':>11}{'prune s':>10}{'ratio':>8}{'target':>11}{'prune CPU s':>13}"
          f"{'peak RSS MB':>13}{'loaded MB':>11}{'realised':>10}  load avg", flush=True)
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--child", method, "--nsamples", str(args.nsamples), "--seqlen",
               str(args.seqlen), "--threads", str(args.threads), "--model", str(args.model)]
        if args.dense_after:
            cmd.append("--dense-after")
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            print(f"{method:<12} FAILED (exit {out.returncode}): {out.stderr[-2000:]}", flush=True)
            rows.append({"method": method, "error": out.stderr[-2000:]})
            continue
        r = json.loads(line[len("RESULT "):])
        dense = r["dense_s"] if r["dense_after_s"] is None else (r["dense_s"] + r["dense_after_s"]) / 2
        r["ratio"] = r["prune_s"] / dense
        target = TARGETS.get(method)
        r["target"] = target
        mark = "" if target is None else (f"<={target} " + ("ok" if r["ratio"] <= target else "no"))
        dense_txt = f"{r['dense_s']:.1f}" + ("" if r["dense_after_s"] is None else f"/{r['dense_after_s']:.1f}")
        print(f"{method:<12}{dense_txt:>11}{r['prune_s']:>10.1f}{r['ratio']:>8.2f}{mark:>11}{r['prune_cpu_s']:>13.1f}"
              f"{r['peak_rss_mb']:>13.0f}{r['rss_after_dense_mb']:>11.0f}{r['realised']:>10.4f}  "
              f"{r['load_before']} -> {r['load_after']}", flush=True)
        rows.append(r)
    return rows


# --- 2. evaluation ------------------------------------------------------------------------------------------
def bench_eval(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from nsa.datasets import PromptConfig, prompted
    from nsa.evaluation import DEFAULT_BATCH_SIZE, evaluate
    from nsa.models import load_model

    model, tok = load_model(str(args.model))
    task = prompted("sst2", PromptConfig(template="review"), tok, args.limit)
    evaluate(model, tok, [task], limit=8, batch_size=DEFAULT_BATCH_SIZE)  # warm-up: harness import, files, allocations
    print(f"\nSST-2, review prompt, {args.limit} examples, {args.threads} torch thread(s); load average {loadavg()}",
          flush=True)
    runs: dict[int, list[dict]] = {DEFAULT_BATCH_SIZE: [], 1: []}
    for _ in range(args.eval_repeats):
        for bs in (DEFAULT_BATCH_SIZE, 1):  # interleaved: load from other work hits both alike
            summary = evaluate(model, tok, [task], limit=args.limit, batch_size=bs)
            t = dict(summary["timing"])
            t["acc"] = summary["tasks"]["sst2"]["acc"]
            runs[bs].append(t)
            print(f"batch {bs:3d}: {t['tokens']} tokens in {t['scoring_s']:.2f} s of scoring = "
                  f"{t['tokens_per_s']:6.0f} tokens/s; simple_evaluate {t['harness_eval_s']:.2f} s; acc {t['acc']:.3f}",
                  flush=True)
    best = {bs: max(r["tokens_per_s"] for r in rs) for bs, rs in runs.items()}
    ratio = best[DEFAULT_BATCH_SIZE] / best[1]
    print(f"best of {args.eval_repeats}: batch {DEFAULT_BATCH_SIZE} {best[DEFAULT_BATCH_SIZE]:.0f} tokens/s, batch 1 "
          f"{best[1]:.0f} tokens/s -> {ratio:.2f}x; load average {loadavg()}", flush=True)
    return {"default_batch": DEFAULT_BATCH_SIZE, "runs": {str(k): v for k, v in runs.items()},
            "best_tokens_per_s": {str(k): v for k, v in best.items()}, "ratio": ratio, "threads": args.threads,
            "limit": args.limit}


# --- 3. the app's default job -------------------------------------------------------------------------------
def app_default_spec(model: str, limit: int = 200, nsamples: int = 32, validation: bool = True) -> dict:
    """What pages/run.py build_spec gives for a real (non-demo) model when nothing is changed (limit 200,
    calibration 32 x 128; smaller values only for a smoke test)."""
    from nsa.attribution import NSA_OPTIONS
    from pruners import get_method

    options = {opt.name: opt.default for opt in get_method("wanda").options}
    nsa_options = {opt.name: opt.default for opt in NSA_OPTIONS if opt.default is not None}  # n_ablate 0 = auto
    if not validation:  # a variant, not the default: NSA's ablation check (2 x (1 + 20) scorings) left out
        nsa_options["validation"] = False
    return {"model": model,
            "prune": {"method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "options": options},
            "calibration": {"source": "c4", "nsamples": nsamples, "seqlen": 128, "seed": 0},
            "evaluate": {"tasks": ["sst2"], "limit": limit},
            "prompt": {"template": "review", "chat": False, "num_fewshot": 0, "fewshot_seed": 0},
            "nsa": {"task": "sst2", "words": "learned", "options": nsa_options}}


def job_child(args) -> None:
    """In a fresh process with a fresh NSA_CACHE_DIR: import, run the job, time each stage; one JSON line."""
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.job_threads)
    from nsa.jobs.pipeline import run_job

    imports = time.perf_counter() - t_start
    spec = app_default_spec(str(args.model), args.job_limit, args.job_nsamples, not args.job_no_validation)
    stages: list[tuple[str, float]] = []

    def progress(event) -> None:
        if not stages or stages[-1][0] != event.stage:
            stages.append((event.stage, time.perf_counter()))

    load_before = loadavg()
    t0 = time.perf_counter()
    folder = run_job(spec, progress=progress)
    total = time.perf_counter() - t0
    by_stage = {}
    for (name, start), nxt in zip(stages, stages[1:] + [("end", t0 + total)]):
        by_stage[name] = by_stage.get(name, 0.0) + nxt[1] - start
    by_stage.pop("done", None)
    log = (Path(folder) / "logs" / "job.log").read_text(encoding="utf-8")
    finished = [ln for ln in log.splitlines() if "finished in" in ln]
    comparison = json.loads((Path(folder) / "eval" / "comparison.json").read_text())
    nsa = json.loads((Path(folder) / "nsa" / "summary.json").read_text()) if (Path(folder) / "nsa" / "summary.json").is_file() else {}
    print("RESULT " + json.dumps({
        "spec": spec, "imports_s": imports, "total_s": total, "stages_s": by_stage, "job_log_finished": finished, "job_log": log[-20000:],
        "peak_rss_mb": rss_mb(), "torch_threads": torch.get_num_threads(), "load_before": load_before,
        "load_after": loadavg(), "comparison": {k: comparison.get(k) for k in ("tasks",) if k in comparison},
        "nsa_keys": sorted(nsa)[:30], "folder": str(folder)}, default=str), flush=True)


def bench_job(args) -> dict:
    source_models = Path(os.environ.get("NSA_CACHE_DIR", ROOT / "cache")) / "models"
    tmp = Path(tempfile.mkdtemp(prefix="nsa-bench-job-"))
    try:
        if source_models.is_dir():
            (tmp / "models").symlink_to(source_models.resolve(), target_is_directory=True)
        env = {**os.environ, "NSA_CACHE_DIR": str(tmp), "NSA_JOB_THREADS": str(args.job_threads)}
        cmd = [sys.executable, __file__, "--job-child", "--job-threads", str(args.job_threads), "--model",
               str(args.model), "--job-limit", str(args.job_limit), "--job-nsamples", str(args.job_nsamples)] + \
            (["--job-no-validation"] if args.job_no_validation else [])
        print(f"\nthe app's default job (SST-2 limit {args.job_limit}, C4 {args.job_nsamples}x128), fresh cache "
              f"{tmp} (models symlinked from {source_models}), "
              f"{'WITHOUT NSA validation, ' if args.job_no_validation else ''}"
              f"{args.job_threads} torch thread(s), OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')}; "
              f"load average {loadavg()}", flush=True)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if out.returncode != 0 or line is None:
            print(f"job FAILED (exit {out.returncode}): {out.stderr[-3000:]}", flush=True)
            return {"error": out.stderr[-3000:]}
        r = json.loads(line[len("RESULT "):])
        r["process_wall_s"] = wall
        for name, s in r["stages_s"].items():
            print(f"  {name:<14}{s:8.1f} s", flush=True)
        ok = "met" if r["total_s"] <= JOB_TARGET_S else "NOT met"
        print(f"  run_job total {r['total_s']:.1f} s ({r['total_s'] / 60:.2f} min; target < 5 min: {ok}); imports "
              f"before it {r['imports_s']:.1f} s; whole process {wall:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MB; "
              f"load average {r['load_before']} -> {r['load_after']}", flush=True)
        print(f"  job.log: {r['job_log_finished']}", flush=True)
        return r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(GGUF))
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads for pruning and evaluation")
    ap.add_argument("--dense-after", action="store_true", help="time the two passes again after pruning too")
    ap.add_argument("--limit", type=int, default=100, help="SST-2 examples for the evaluation benchmark")
    ap.add_argument("--eval-repeats", type=int, default=2)
    ap.add_argument("--job-threads", type=int, default=usable_cores(),
                    help="torch threads of the default job (default: the worker's, every usable core)")
    ap.add_argument("--job-limit", type=int, default=200, help="the app's default 200; smaller for a smoke test")
    ap.add_argument("--job-nsamples", type=int, default=32, help="the app's default 32; smaller for a smoke test")
    ap.add_argument("--job-no-validation", action="store_true",
                    help="variant: the default job without NSA's validation (its ablation scorings)")
    ap.add_argument("--skip-prune", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-job", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--job-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.child:
        return prune_child(args)
    if args.job_child:
        return job_child(args)

    results: dict = {"model": args.model, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "load_start": loadavg(), "cpus": os.cpu_count()}
    print(f"SmolLM2-135M-Instruct ({args.model}); {os.cpu_count()} CPUs; load average {loadavg()}", flush=True)
    if not args.skip_prune:
        results["prune"] = {"nsamples": args.nsamples, "seqlen": args.seqlen, "threads": args.threads,
                            "rows": bench_prune(args)}
    if not args.skip_eval:
        results["eval"] = bench_eval(args)
    if not args.skip_job:
        results["job"] = bench_job(args)
    results["load_end"] = loadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
