"""Benchmark: tokens/s of a sentiment evaluation through lm-eval at a chosen batch size vs batch size 1,
and what starting the harness costs. One run, ratios printed.

    NSA_DATA_DIR=../shared/data python bench/bench_eval.py [--model ../shared/models/stories260K]
        [--task sst2] [--limit 300] [--batch-size 32]

Tokens are real (unpadded) tokens of the sequences the model ran; the harness computes the two one-token
sentiment choices from one forward pass per example when they share the context.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsa.models import load_model  # noqa: E402

os.environ.setdefault("NSA_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def load(model_id: str):
    return load_model(model_id)


def flops_per_token(model) -> float:
    """2 x the parameters of every Linear (lm_head included): the matmul FLOPs one token costs."""
    import torch

    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def matmul_peak(n: int = 512, repeat: int = 20) -> float:
    """Measured 1-thread fp32 GEMM throughput (GFLOP/s) on this machine right now."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n ** 3 * repeat / (time.perf_counter() - start) / 1e9


def startup_costs() -> dict:
    """Fresh-process cost of `import lm_eval` and of a TaskManager with / without the built-in index."""
    code = ("import time; t=time.time(); import lm_eval; from lm_eval.tasks import TaskManager; a=time.time()-t;"
            "t=time.time(); TaskManager(include_defaults=False); b=time.time()-t;"
            "t=time.time(); TaskManager(); c=time.time()-t; print(a, b, c)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    a, b, c = map(float, out.stdout.split()[-3:])
    return {"import_lm_eval_s": a, "task_manager_local_s": b, "task_manager_full_index_s": c}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories260K"))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from nsa.evaluation import DEFAULT_BATCH_SIZE, evaluate

    batch = args.batch_size or DEFAULT_BATCH_SIZE
    costs = startup_costs()
    model, tok = load(args.model)
    evaluate(model, tok, args.task, limit=8, batch_size=batch)  # warm-up (first-call allocations, datasets)
    runs = {}
    flops = flops_per_token(model)
    peak = matmul_peak()
    print(f"model: {args.model} ({flops / 2e6:.2f}M matmul parameters incl. lm_head); task {args.task}, "
          f"limit {args.limit}; 1 thread; 1-thread fp32 matmul peak here {peak:.0f} GFLOP/s")
    for bs in sorted({1, 4, 8, 16, batch, 64}):
        summary = evaluate(model, tok, args.task, limit=args.limit, batch_size=bs)
        runs[bs] = summary["timing"]
        acc = summary["tasks"][args.task]["acc"]
        t = runs[bs]
        print(f"batch {bs:3d}: {t['tokens']} tokens in {t['scoring_s']:.2f} s of scoring = {t['tokens_per_s']:7.0f} "
              f"tokens/s ({t['tokens_per_s'] * flops / 1e9:5.1f} GFLOP/s of linear layers); "
              f"whole simple_evaluate {t['harness_eval_s']:.2f} s (acc {acc:.4f})")
    ratio = runs[batch]["tokens_per_s"] / runs[1]["tokens_per_s"]
    best = max(runs, key=lambda b: runs[b]["tokens_per_s"])
    print(f"speed-up batch {batch} (default) vs 1: {ratio:.2f}x; best batch {best}: "
          f"{runs[best]['tokens_per_s'] / runs[1]['tokens_per_s']:.2f}x (target >= 4x)")
    print("start-up (fresh process): import lm_eval {import_lm_eval_s:.2f} s; TaskManager without built-in "
          "index {task_manager_local_s:.3f} s; with the full built-in index {task_manager_full_index_s:.2f} s"
          .format(**costs))


if __name__ == "__main__":
    main()
