"""`python -m nsa neurons RUN`: a run's MLP neurons — one neuron's output tokens and examples, search by word,
label quality, export.

    python -m nsa neurons RUN --layer 3 --neuron 17 [--examples]   # output tokens (logit lens), on-demand examples
    python -m nsa neurons RUN --word terrible                       # neurons that respond to a word
    python -m nsa neurons RUN --quality                             # detection AUC of every NSA label (cached)
    python -m nsa neurons RUN --damaged [--share 0.1]               # words of the neurons pruning damaged most
    python -m nsa neurons RUN --export neurons.jsonl|neurons.csv    # every neuron (layout: docs/neurons.md)
"""
from __future__ import annotations

import argparse
import sys

from nsa import label_quality as LQ
from nsa import neuron_examples as NE
from nsa import neuron_export as NX
from nsa.cli.bar import Bar
from nsa.damage import DamageConfig, run_damage
from nsa.errors import NSAError
from nsa.jobs.runs import check_run_id, existing_run
from nsa.logit_lens import check_neuron, top_tokens
from nsa.models import load_model


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("neurons", help="a run's neurons: output tokens, examples, word search, quality, export",
                              description=__doc__.splitlines()[0])
    p.add_argument("run", help="run id (16 hex digits, see `python -m nsa runs`)")
    p.add_argument("--layer", type=int, help="with --neuron: one neuron's output tokens")
    p.add_argument("--neuron", type=int, help="the neuron's index in its layer")
    p.add_argument("--examples", action="store_true",
                   help="with --layer/--neuron: top-activating examples on task prompts and general text (cached)")
    p.add_argument("--word", help="neurons whose NSA matching finds this word significant")
    p.add_argument("--quality", action="store_true", help="detection AUC of every NSA label on held-out examples")
    p.add_argument("--damaged", action="store_true",
                   help="words over-represented in the labels of the neurons pruning damaged most (nsa.damage)")
    p.add_argument("--share", type=float, default=DamageConfig.share,
                   help="with --damaged: fraction of labelled neurons called most damaged (default 0.1)")
    p.add_argument("--export", metavar="FILE", help="write every neuron to FILE.jsonl or FILE.csv")
    p.add_argument("--no-output-tokens", action="store_true",
                   help="export without output tokens (no model is loaded)")
    p.add_argument("--top", type=int, default=10, help="output tokens shown per side (default 10; 5 in exports)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    existing_run(check_run_id(args.run))
    if args.export:
        NX.check_export_path(args.export)
    if (args.layer is None) != (args.neuron is None):
        raise NSAError("--layer and --neuron go together (one neuron)")
    if args.examples and args.layer is None:
        raise NSAError("--examples needs --layer and --neuron")
    if not any([args.layer is not None, args.word, args.quality, args.export, args.damaged]):
        raise NSAError("say what to show: --layer L --neuron I, --word W, --damaged, --quality or --export FILE")
    config = DamageConfig(share=args.share)
    if args.word:
        show_search(args.run, args.word)
    if args.damaged:
        show_damage(args.run, config)
    needs_model = args.layer is not None or args.quality or (args.export and not args.no_output_tokens)
    if not needs_model:
        return export(args, None, None, None) if args.export else 0
    inputs = NE.run_inputs(args.run)
    model, tokenizer = load_model(inputs.model, dtype=inputs.spec.get("dtype", "float32"))
    if args.layer is not None:
        check_neuron(model, args.layer, args.neuron)
        show_neuron(model, tokenizer, inputs, args.layer, args.neuron, args.top, args.examples)
    if args.quality:
        with Bar("label quality") as bar:
            q = LQ.quality(model, tokenizer, inputs, progress=bar)
        print(LQ.method_sentence(inputs))
        print(q.sort_values("auc", ascending=False).to_string(index=False, max_rows=40))
    return export(args, model, tokenizer, inputs) if args.export else 0


def show_neuron(model, tokenizer, inputs, layer: int, index: int, k: int, examples: bool) -> None:
    lens = top_tokens(model, tokenizer, layer, index, inputs.masks, inputs.weights, k)
    print(f"layer {layer} neuron {index}: output weights kept {lens['kept_norm']:.1%} of their norm "
          f"(cosine to dense {lens['cosine']:.3f})" if lens["cosine"] is not None else
          f"layer {layer} neuron {index}: output weights entirely pruned")
    for part in ("dense", "pruned"):
        ranked = lens[part]
        print(f"  {part:6s} promotes:   " + ", ".join(f"{t!r} {v:+.3f}" for t, v in
                                                      zip(ranked["promoted"], ranked["promoted_logits"])))
        print(f"  {part:6s} suppresses: " + ", ".join(f"{t!r} {v:+.3f}" for t, v in
                                                      zip(ranked["suppressed"], ranked["suppressed_logits"])))
    if examples:
        with Bar("neuron examples") as bar:
            data = NE.examples(model, tokenizer, inputs, layer, index, progress=bar)
        for name, src in data["sources"].items():
            print(f"{name} ({src.get('name')}, {src['n']} texts): top examples by dense max activation")
            for ex in src["top_dense"]:
                text = "".join(ex["tokens"]).replace("\n", " ")
                print(f"  dense {ex['max_dense']:+.3f} pruned {ex['max_pruned']:+.3f}  {text[:90]}")


def show_search(run_id: str, word: str) -> None:
    found = NX.word_neurons(run_id, word)
    if found.empty:
        print(f"'{NX.check_word(word)}' is one of the run's influential words, but no neuron passes the labelling "
              "test for it")
        return
    print(f"{len(found)} neurons respond to '{NX.check_word(word)}' (most selective first):")
    print(found.to_string(index=False, max_rows=40))


def show_damage(run_id: str, config: DamageConfig) -> None:
    report = run_damage(run_id, config)
    print(report.sentence())
    print(report.clusters.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(report.words.to_string(index=False, max_rows=30, float_format=lambda v: f"{v:.3g}"))


def export(args, model, tokenizer, inputs) -> int:
    if not NX.has_nsa(args.run):
        print("note: " + NX.NSA_MISSING.format(run=args.run), file=sys.stderr)
    with Bar("export") as bar:
        records = NX.export_records(args.run, model, tokenizer, inputs.masks if inputs else None,
                                    inputs.weights if inputs else None, progress=bar)
    path = NX.write_export(records, args.export)
    print(f"wrote {len(records)} neurons to {path}")
    return 0
