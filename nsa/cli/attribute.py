"""`python -m nsa attribute`: Neuron Semantic Attribution of a model (and its pruned version) on a task.

Writes OUT/words.jsonl, neuron_labels.jsonl, top_examples.jsonl, summary.json and, with --masks,
neuron_shift.jsonl, clusters.jsonl, flips.jsonl (columns in docs/nsa.md). Heavy imports stay inside run().
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nsa.errors import NSAError
from nsa.masks import check_mask_files


def add_commands(subparsers) -> None:
    from nsa.attribution import NSA_OPTIONS  # light: torch is imported only inside functions

    p = subparsers.add_parser("attribute", help="neuron semantic attribution (words -> neurons -> pruning)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help='model folder, hub id, or "demo"')
    p.add_argument("--task", default="sst2", help="a classification task (see `python -m nsa tasks`)")
    p.add_argument("--masks", help="RUN/masks.safetensors: also compare the pruned model")
    p.add_argument("--weights", help="weights.safetensors with SparseGPT's updated weights (with --masks)")
    p.add_argument("--words", default="learned",
                   help="learned (logistic regression), gradient (gradient x input), or a JSON/CSV word file")
    p.add_argument("--limit", type=int, help="first N examples (default: all)")
    p.add_argument("--out", required=True, help="output folder")
    for opt in NSA_OPTIONS:  # the same options as a job spec's nsa.options and the app's NSA form
        flag = "--" + opt.name.replace("_", "-")
        if opt.type is bool:
            p.add_argument(f"--no-{opt.name}", dest=opt.name, action="store_false", help=f"skip: {opt.help}")
        else:
            p.add_argument(flag, type=opt.type, default=opt.default, help=opt.help)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from nsa.attribution import NSA_OPTIONS, attribution_config

    if args.batch_size < 1:
        raise NSAError(f"--batch-size must be at least 1, got {args.batch_size}")
    options = {o.name: getattr(args, o.name) for o in NSA_OPTIONS}
    return attribution_config(options, batch_size=args.batch_size, label=lambda n: "--" + n.replace("_", "-"))


def run(args: argparse.Namespace) -> int:
    from nsa import datasets as D
    from nsa.cli.evaluate import _Bar, _load_model

    D.get_task(args.task)
    D.check_limit(args.limit)
    check_mask_files(args.masks, args.weights)
    if args.words not in ("learned", "gradient") and not Path(args.words).is_file():
        raise NSAError(f"--words {args.words!r}: use learned, gradient, or an existing JSON/CSV word file")
    config = config_from_args(args)
    from nsa.attribution import attribute

    model, tokenizer = _load_model(args.model, args.device, args.dtype)
    bar = _Bar("attribute")
    try:
        summary = attribute(model, tokenizer, args.task, masks=args.masks, weights=args.weights, words=args.words,
                            limit=args.limit, out_dir=args.out, progress=bar, config=config, model_id=args.model)
    finally:
        bar.close()
    print_summary(summary)
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def print_summary(summary: dict) -> None:
    n = summary["neurons"]
    print(f"{summary['task']}: {summary['words']['n_words']} words ({summary['words']['method']}), "
          f"{n['labelled']} of {n['examined']} neurons labelled")
    for cluster, c in n["per_cluster"].items():
        print(f"  {cluster:12s} labelled {c['labelled']}")
    acc = summary["accuracy"]
    line = f"accuracy dense {acc['dense']:.4f}"
    if acc.get("pruned") is not None:
        line += f" pruned {acc['pruned']:.4f} (drop {acc['drop']:.2f} points, lost {acc['n_lost']}, " \
                f"gained {acc['n_gained']})"
    print(line)
    for cluster, v in summary["validation"].items():
        if v["labelled_drop"] is None:
            print(f"  ablate {cluster:12s} no labelled neurons")
            continue
        print(f"  ablate {cluster:12s} top-{v['n_neurons']} labelled: drop {v['labelled_drop']:.2f} points; "
              f"random: {v['random_drop_mean']:.2f} +- {v['random_drop_std']:.2f}; gold margin lost "
              f"{v['labelled_margin_drop']:.3f} nats, random {v['random_margin_drop_mean']:.3f} "
              f"+- {v['random_margin_drop_std']:.3f}")
