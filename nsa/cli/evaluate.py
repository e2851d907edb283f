"""`python -m nsa evaluate|compare-eval|tasks|calibrate`: task evaluation, dense/pruned comparison, the task
registry and calibration sets from the command line. Heavy imports stay inside the command functions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nsa.errors import NSAError
from nsa.masks import check_mask_files


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a model (optionally with masks) on tasks via lm-eval",
                              description="Writes OUT/summary.json and OUT/<task>.jsonl (one record per example).")
    p.add_argument("--model", required=True, help='model folder, hub id, or "demo"')
    p.add_argument("--masks", help="masks.safetensors to apply (evaluates the pruned model without saving it)")
    p.add_argument("--weights", help="weights.safetensors with SparseGPT's updated weights (with --masks)")
    p.add_argument("--tasks", default="sst2", help="comma-separated task names (see `python -m nsa tasks`)")
    p.add_argument("--limit", type=int, help="first N examples of each task (default: all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-length", type=int, help="context length (default: the model's); longer examples "
                                                  "are truncated from the left and counted")
    p.add_argument("--custom", action="append", default=[], metavar="FILE",
                   help="a CSV/JSONL with text,label columns to evaluate as a task named after the file")
    p.add_argument("--label-names", default="negative,positive", help="label names of --custom files")
    p.set_defaults(func=run_evaluate)

    c = subparsers.add_parser("compare-eval", help="accuracy drop and flips between two evaluation folders")
    c.add_argument("dense_dir")
    c.add_argument("pruned_dir")
    c.add_argument("--out", help="write the comparison JSON here")
    c.set_defaults(func=run_compare)

    t = subparsers.add_parser("tasks", help="list the registered evaluation tasks and calibration sources")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=run_tasks)

    b = subparsers.add_parser("calibrate", help="build (or show the cached) calibration set")
    b.add_argument("--model", required=True, help="model whose tokenizer cuts the windows")
    b.add_argument("--source", default="c4", help="c4, wikitext2, demo-generic, a task name, or 'file'")
    b.add_argument("--path", help="a user text file (JSONL/CSV with a text column, or .txt)")
    b.add_argument("--nsamples", type=int, default=128)
    b.add_argument("--seqlen", type=int, default=2048)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=run_calibrate)


class _Bar:
    """tqdm bar fed by library progress callbacks (fractions 0..1)."""

    def __init__(self, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=1000, desc=desc, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def __call__(self, event) -> None:
        target = int(round(1000 * event.fraction))
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
        self.bar.set_postfix_str(event.message, refresh=False)

    def close(self) -> None:
        self.bar.close()


def _load_model(model_id: str, device: str, dtype: str):
    try:
        from nsa.models import load_model
    except ImportError as err:
        raise NSAError(f"model loading (nsa.models) is not available: {err}") from None
    return load_model(model_id, device=device, dtype=dtype)


def run_evaluate(args: argparse.Namespace) -> int:
    from nsa import datasets as D
    from nsa.evaluation import DEFAULT_BATCH_SIZE, evaluate, resolve_tasks

    tasks = [t for t in args.tasks.split(",") if t.strip()]
    for path in args.custom:
        spec = D.register_custom_task(path, args.label_names.split(","))
        tasks.append(spec.name)
    resolve_tasks(tasks)  # unknown task / bad limit fail before the model loads
    D.check_limit(args.limit)
    check_mask_files(args.masks, args.weights)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, tokenizer = _load_model(args.model, args.device, args.dtype)
    bar = _Bar("evaluate")
    try:
        summary = evaluate(model, tokenizer, tasks, limit=args.limit, out_dir=args.out, progress=bar,
                           batch_size=args.batch_size or DEFAULT_BATCH_SIZE, max_length=args.max_length,
                           masks=args.masks, weights=args.weights)
    finally:
        bar.close()
    for name, entry in summary["tasks"].items():
        if entry["kind"] == "perplexity":
            print(f"{name:16s} ppl {entry['ppl']:.3f} ({entry['n_windows']} windows of {entry['seqlen']})")
            continue
        lo, hi = entry["acc_ci95"]
        norm = f"  acc_norm {entry['acc_norm']:.4f}" if "acc_norm" in entry else ""
        print(f"{name:16s} acc {entry['acc']:.4f} [{lo:.3f}, {hi:.3f}]{norm}  n={entry['n']}"
              f"  truncated={entry['n_truncated']}")
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from nsa.evaluation import compare

    result = compare(args.dense_dir, args.pruned_dir, out_path=args.out)
    for name, entry in result["tasks"].items():
        if entry["kind"] == "perplexity":
            print(f"{name:16s} ppl {entry['dense_ppl']:.3f} -> {entry['pruned_ppl']:.3f}")
            continue
        lo, hi = entry["drop_ci95"]
        print(f"{name:16s} acc {entry['dense_acc']:.4f} -> {entry['pruned_acc']:.4f}  drop {entry['drop']:+.4f} "
              f"[{lo:+.3f}, {hi:+.3f}]  lost {entry['n_lost']} gained {entry['n_gained']} (n={entry['n']})")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from nsa import datasets as D
    from nsa.calibration import list_calibration_sources

    rows = [D.task_info(n) for n in D.list_tasks()]
    if args.json:
        print(json.dumps({"tasks": rows, "calibration_sources": list_calibration_sources()}, indent=1))
        return 0
    for r in rows:
        print(f"{r['name']:16s} {r['group']:10s} {r['kind']:16s} {r['description']}")
    print("calibration sources:", ", ".join(list_calibration_sources()), "(or --path FILE)")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from nsa.calibration import build_calibration

    _, tokenizer = _load_model(args.model, "cpu", "float32")
    bar = _Bar("calibration")
    try:
        calib = build_calibration(args.source, tokenizer, args.nsamples, args.seqlen, seed=args.seed,
                                  path=args.path, progress=bar)
    finally:
        bar.close()
    print(json.dumps(calib.summary(), indent=1))
    return 0
