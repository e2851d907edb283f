"""`python -m nsa attribute`: Neuron Semantic Attribution of a model (and its pruned version) on a task.

Writes OUT/words.jsonl, neuron_labels.jsonl, top_examples.jsonl, summary.json and, with --masks,
neuron_shift.jsonl, clusters.jsonl, flips.jsonl and comparison.json (columns in docs/nsa.md). The dense records
come from the shared dense-evaluation cache, as a job's do; the model is pruned in place after the dense part.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nsa import attribution as A
from nsa.atomic import write_json
from nsa.cli.bar import Bar
from nsa.cli.checks import check_out
from nsa.cli.prompt_args import add_prompt_arguments, prompt_from_args
from nsa.datasets import prompted
from nsa.errors import NSAError
from nsa.evaluation import (
    compare_records,
    dense_entry,
    dense_evaluation,
    load_records,
    run_evaluation,
)
from nsa.masks import check_mask_files, load_masks, load_weights
from nsa.models import check_device, load_model, model_key


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("attribute", help="neuron semantic attribution (words -> neurons -> pruning)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help='model folder, .gguf file, hub id, or "demo"')
    p.add_argument("--task", default="sst2", help="a classification task (see `python -m nsa tasks`)")
    p.add_argument("--masks", help="RUN/masks.safetensors: also compare the pruned model")
    p.add_argument("--weights", help="weights.safetensors with SparseGPT's updated weights (with --masks)")
    p.add_argument("--words", default="learned",
                   help="learned (logistic regression), gradient (gradient x input), or a JSON/CSV word file")
    p.add_argument("--limit", type=int, help="first N examples (default: all)")
    p.add_argument("--out", required=True, help="output folder")
    for opt in A.NSA_OPTIONS:  # the same options as a job spec's nsa.options and the app's NSA form
        p.add_argument(flag(opt.name), dest=f"opt_{opt.name}", default=None, metavar=opt.type.__name__.upper(),
                       help=f"{opt.help.replace('%', '%%')} (default {opt.default})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    add_prompt_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> A.NSAConfig:
    """The NSAConfig of the flags; a bad value is an NSAError naming its flag."""
    options = {o.name: getattr(args, f"opt_{o.name}") for o in A.NSA_OPTIONS
               if getattr(args, f"opt_{o.name}", None) is not None}
    try:
        return A.NSAConfig(task=args.task, words=args.words, limit=args.limit, options=options)
    except NSAError as err:
        raise NSAError(err.at(flag(err.field.split(".")[-1]) if err.field else None)) from None


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    prompt = prompt_from_args(args, [config.task_spec], config.limit)
    check_mask_files(args.masks, args.weights)
    check_device(args.device)
    check_out(args.out)
    masks = load_masks(args.masks) if args.masks else None
    model, tokenizer = load_model(args.model, args.device, args.dtype)
    key = model_key(args.model)
    spec = prompted(config.task, prompt, tokenizer, config.limit)
    with Bar("attribute") as bar:
        dense_evaluation(args.model, [spec], limit=config.limit, key=key, model=model, tokenizer=tokenizer,
                         progress=bar)
        dense_records = load_records(dense_entry(key, spec, config.limit).folder, config.task)
        pruned_records: list[dict] = []

        def evaluate_pruned() -> list[dict]:
            _summary, records = run_evaluation(model, tokenizer, spec, limit=config.limit, progress=bar)
            pruned_records.extend(records[config.task])
            return pruned_records

        summary = A.attribute(model, tokenizer, config, args.model, key, dense_records, masks=masks,
                              weights=load_weights(args.weights), pruned_records=evaluate_pruned, out_dir=args.out,
                              progress=bar, spec=spec)
    comparison = compare_records(dense_records, pruned_records) if masks is not None else None
    if comparison is not None:
        write_json(Path(args.out) / "comparison.json", {"tasks": {config.task: comparison}})
    print_summary(summary, comparison)
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def print_summary(summary: dict, comparison: dict | None) -> None:
    n = summary["neurons"]
    print(f"{summary['task']}: {summary['words']['n_words']} words ({summary['words']['method']}), "
          f"{n['labelled']} of {n['examined']} neurons labelled, {summary['n_examples']} examples")
    for cluster, c in n["per_cluster"].items():
        print(f"  {cluster:12s} labelled {c['labelled']}")
    if comparison is not None:
        lo, hi = comparison["drop_ci95"]
        print(f"accuracy dense {comparison['dense_acc']:.4f} pruned {comparison['pruned_acc']:.4f} (drop "
              f"{100 * comparison['drop']:.2f} points [{100 * lo:.2f}, {100 * hi:.2f}], lost {comparison['n_lost']}, "
              f"gained {comparison['n_gained']}, n={comparison['n']})")
    for cluster, detail in (summary["validation_detail"].get("clusters") or {}).items():
        print(f"  ablate {cluster:12s} {detail.get('verdict', '')}")
