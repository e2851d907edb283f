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
    from nsa.matching import MatchConfig  # light modules: torch is imported only inside their functions
    from nsa.validation import ValidationConfig
    from nsa.words import WordConfig

    w, m, v = WordConfig(), MatchConfig(), ValidationConfig()
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
    p.add_argument("--top-k", type=int, default=w.top_k, help="influential words per class (learned/gradient)")
    p.add_argument("--min-df", type=int, default=w.min_df, help="minimum number of examples containing a word")
    p.add_argument("--alpha", type=float, default=m.alpha, help="Benjamini-Hochberg FDR of the labelling test")
    p.add_argument("--min-occurrences", type=int, default=m.min_occurrences, help="occurrences a word needs to be tested")
    p.add_argument("--min-selectivity", type=float, default=m.min_selectivity, help="minimum selectivity of a label word")
    p.add_argument("--n-ablate", type=int, default=v.n_neurons,
                   help=f"labelled neurons ablated per cluster (default: {v.share:.0%} of the MLP neurons, "
                        f"at least 10)")
    p.add_argument("--seeds", type=int, default=v.seeds, help="random-ablation seeds (>= 3)")
    p.add_argument("--no-validation", action="store_true", help="skip the ablation check")
    p.add_argument("--batch-size", type=int, default=m.batch_size)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from nsa.attribution import AttributionConfig
    from nsa.matching import MatchConfig
    from nsa.validation import ValidationConfig
    from nsa.words import WordConfig

    for name in ("top_k", "min_df", "min_occurrences", "n_ablate", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise NSAError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.alpha < 1:
        raise NSAError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.seeds < 3:
        raise NSAError(f"--seeds must be at least 3 (random controls), got {args.seeds}")
    return AttributionConfig(
        words=WordConfig(top_k=args.top_k, min_df=args.min_df, batch_size=args.batch_size),
        matching=MatchConfig(batch_size=args.batch_size, min_occurrences=args.min_occurrences, alpha=args.alpha,
                             min_selectivity=args.min_selectivity),
        validation=ValidationConfig(n_neurons=args.n_ablate, seeds=args.seeds, batch_size=args.batch_size),
        validate=not args.no_validation)


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
