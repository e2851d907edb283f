"""Demo model measurements for docs/demo.md: dense accuracy (demo-reviews, demo-unseen, SST-2 validation) and
the accuracy drop under pruning, calibrated on generic text vs reviews (mean ± std over calibration seeds).

    python bench/bench_demo.py [--model nsa/demo/model] [--methods magnitude,wanda,sparsegpt]
                               [--sparsities 0.5,0.6,0.7] [--seeds 0,1,2] [--nsamples 32] [--seqlen 128]

Uses the demo's direct log-likelihood scorer (nsa.demo.score), which compares log p(" negative") and
log p(" positive") after the evaluator's sentiment prompt; `--harness` also checks dense accuracy with
nsa.evaluation. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _sst2_rows() -> list[dict] | None:
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sst2" / "validation.jsonl"
    if not path.exists():
        return None
    return [{"text": r.get("sentence", r.get("text")), "label": int(r["label"])} for r in _rows(path)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nsa/demo/model")
    ap.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import pruners
    from nsa.calibration import build_calibration
    from nsa.demo.score import sentiment_accuracy
    from nsa.paths import DEMO_DATA_DIR

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    reviews = _rows(DEMO_DATA_DIR / "reviews_test.jsonl")
    unseen = _rows(DEMO_DATA_DIR / "unseen_test.jsonl")
    sst2 = _sst2_rows()
    dense = {"demo-reviews": sentiment_accuracy(model, tok, reviews),
             "demo-unseen": sentiment_accuracy(model, tok, unseen)}
    if sst2:
        dense["sst2 (validation)"] = sentiment_accuracy(model, tok, sst2)
    print("| set | n | dense accuracy |\n|---|---|---|")
    for name, acc in dense.items():
        n = {"demo-reviews": len(reviews), "demo-unseen": len(unseen)}.get(name, len(sst2 or []))
        print(f"| {name} | {n} | {acc:.3f} |")
    print()

    seeds = [int(s) for s in args.seeds.split(",")]
    calib = {(src, s): build_calibration(src, tok, args.nsamples, args.seqlen, seed=s).input_ids
             for src in ("demo-generic", "demo-reviews") for s in seeds}
    print(f"| method | sparsity | calibration | demo-reviews acc (mean ± std over seeds {args.seeds}) "
          f"| drop vs dense (points) |\n|---|---|---|---|---|")
    for method in args.methods.split(","):
        for sp in (float(x) for x in args.sparsities.split(",")):
            sources = ("none",) if method == "magnitude" else ("demo-generic", "demo-reviews")
            for src in sources:
                accs = []
                for s in (seeds[:1] if src == "none" else seeds):
                    m = copy.deepcopy(model)
                    ids = None if src == "none" else calib[(src, s)]
                    pruners.prune(m, ids, pruners.PruneConfig(method=method, sparsity=sp))
                    accs.append(sentiment_accuracy(m, tok, reviews))
                mean = statistics.mean(accs)
                std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
                print(f"| {method} | {sp:.0%} | {src} | {mean:.3f} ± {std:.3f} | "
                      f"{100 * (dense['demo-reviews'] - mean):.1f} |", flush=True)
    print(f"\n(total {time.time() - t0:.0f} s, {args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
