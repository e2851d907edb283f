"""`python -m nsa evaluate|compare-eval|tasks|calibrate`: task evaluation, dense/pruned comparison, the task
registry and calibration sets from the command line."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nsa import datasets as D
from nsa.calibration import build_calibration, list_calibration_sources
from nsa.cli.bar import Bar
from nsa.cli.checks import check_out
from nsa.cli.prompt_args import add_prompt_arguments, prompt_from_args
from nsa.errors import NSAError
from nsa.evaluation import DEFAULT_BATCH_SIZE, compare, evaluate, resolve_tasks
from nsa.masks import apply_masks, check_mask_files, load_masks, load_weights
from nsa.models import check_device, load_model


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
    p.add_argument("--ppl-seqlen", type=int, help="perplexity window in tokens (default: the model's "
                                                  "max_position_embeddings, as Wanda's evaluation); --limit caps "
                                                  "the number of windows")
    p.add_argument("--custom", action="append", default=[], metavar="FILE",
                   help="a CSV/JSONL with text,label columns to evaluate as a task named after the file")
    p.add_argument("--label-names", default="negative,positive", help="label names of --custom files")
    add_prompt_arguments(p)
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


def run_evaluate(args: argparse.Namespace) -> int:
    tasks = [t for t in args.tasks.split(",") if t.strip()]
    for path in args.custom:
        spec = D.register_custom_task(path, args.label_names.split(","))
        tasks.append(spec.name)
    specs = resolve_tasks(tasks)  # unknown task / bad limit fail before the model loads
    D.check_limit(args.limit)
    prompt = prompt_from_args(args, specs, args.limit)
    for name in ("batch_size", "max_length", "ppl_seqlen"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise NSAError(f"--{name.replace('_', '-')} {value}: must be a positive integer")
    check_mask_files(args.masks, args.weights)
    check_device(args.device)
    check_out(args.out)
    masks = load_masks(args.masks) if args.masks else None
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    if masks is not None:
        apply_masks(model, masks, load_weights(args.weights))
    asked = [D.prompted(spec, prompt, tokenizer, args.limit) for spec in specs]
    with Bar("evaluate") as bar:
        summary = evaluate(model, tokenizer, asked, limit=args.limit, out_dir=args.out, progress=bar,
                           batch_size=args.batch_size or DEFAULT_BATCH_SIZE, max_length=args.max_length, ppl_seqlen=args.ppl_seqlen)
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
    rows = [D.task_info(n) for n in D.list_tasks()]
    if args.json:
        print(json.dumps({"tasks": rows, "calibration_sources": list_calibration_sources()}, indent=1))
        return 0
    for r in rows:
        print(f"{r['name']:16s} {r['group']:10s} {r['kind']:16s} {r['description']}")
    print("calibration sources:", ", ".join(list_calibration_sources()), "(or --path FILE)")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    _, tokenizer = load_model(args.model, "cpu", "float32")
    with Bar("calibration") as bar:
        calib = build_calibration(args.source, tokenizer, args.nsamples, args.seqlen, seed=args.seed,
                                  path=args.path, progress=bar)
    print(json.dumps(calib.summary(), indent=1))
    return 0
