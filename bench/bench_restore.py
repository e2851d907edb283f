"""Benchmark of the restore experiment (`nsa.restore`): what one restore costs against one scoring of the run's
example set, and what the cache saves, on the demo model and stories260K (SmolLM2 with --smollm2, if its folder
exists).

    NSA_DATA_DIR=../shared/data NSA_MODELS_DIR=../shared/models python bench/bench_restore.py [--smollm2]

Each model gets one job through the real pipeline (in a bench cache, `--cache`, reused when run again): Wanda
50-70% with NSA on a sentiment task. Then, in this one run (CPU, 1 thread):
1. the checks (`plan_restore`: run files, neurons table, random controls), no model;
2. a cold restore of the first cluster with labelled neurons (`restore_run`: model load + prune in place + 1 + 20
   scorings of the example set), and the same call again (from the cache);
3. one scoring of the example set on the pruned model (`run_evaluation`, what a run's pruned eval does) and one
   put-back + undo of the chosen neurons (`Restorer.restored`): the restore's cost is ~21 scorings, the rest is
   overhead (load, copies).
The ratios printed are from this one run; the recovered accuracy and margin are printed with their random
baselines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NSA_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("NSA_MODELS_DIR", str(ROOT.parent / "shared" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from nsa.datasets import prompted  # noqa: E402
from nsa.evaluation import run_evaluation  # noqa: E402
from nsa.jobs.pipeline import run_job  # noqa: E402
from nsa.jobs.spec import parse_spec  # noqa: E402
from nsa.masks import load_masks  # noqa: E402
from nsa.models import load_model  # noqa: E402
from nsa.restore import RestoreConfig, Restorer, plan_restore, restore_run, run_file  # noqa: E402


def specs(smollm2: bool) -> dict[str, dict]:
    models = Path(os.environ["NSA_MODELS_DIR"])
    out = {"demo": {"model": "demo", "prune": {"method": "wanda", "sparsity": 0.7},
                    "calibration": {"source": "demo-generic", "nsamples": 32, "seqlen": 128, "seed": 0},
                    "evaluate": {"tasks": ["demo-reviews"]}, "nsa": {"task": "demo-reviews"}},
           "stories260K": {"model": str(models / "stories260K"), "prune": {"method": "wanda", "sparsity": 0.5},
                           "calibration": {"source": "wikitext2", "nsamples": 8, "seqlen": 64, "seed": 0},
                           "evaluate": {"tasks": ["sst2"], "limit": 200},
                           "nsa": {"task": "sst2", "limit": 200, "options": {"label_at_chance": True}}}}
    smol = models / "smollm2-135m-instruct"
    if smollm2 and smol.is_dir():
        out["smollm2"] = {"model": str(smol), "prune": {"method": "wanda", "sparsity": 0.5},
                          "calibration": {"source": "wikitext2", "nsamples": 8, "seqlen": 128, "seed": 0},
                          "evaluate": {"tasks": ["sst2"], "limit": 100}, "nsa": {"task": "sst2", "limit": 100}}
    return out


def bench(name: str, spec: dict) -> None:
    spec = parse_spec(spec)
    t0 = time.perf_counter()
    run_job(spec)
    print(f"\n== {name}: run {spec.id} ready in {time.perf_counter() - t0:.1f} s")
    summary = json.loads(run_file(spec.id, "nsa/summary.json").read_text())
    per = summary["neurons"]["per_cluster"]
    cluster = max(per, key=lambda c: (c == "negative", per[c]["labelled"]))
    if not per[cluster]["labelled"]:
        print(f"   no labelled cluster ({per}): skipped")
        return
    config = RestoreConfig(cluster=cluster)
    t = time.perf_counter()
    plan = plan_restore(spec.id, config)
    t_plan = time.perf_counter() - t
    t = time.perf_counter()
    result = restore_run(spec.id, config)
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    again = restore_run(spec.id, config)
    t_cached = time.perf_counter() - t
    assert again["cache"]["reused"]

    model, tokenizer = load_model(plan.spec.model)
    restorer = Restorer.prune(model, load_masks(run_file(spec.id, "masks.safetensors")))
    task = prompted(plan.task, plan.spec.prompt, tokenizer, plan.limit)
    t = time.perf_counter()
    run_evaluation(model, tokenizer, task, limit=plan.limit)
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(10):
        with restorer.restored(plan.chosen):
            pass
    t_swap = (time.perf_counter() - t) / 10
    n_cond = 1 + result["draws"]
    print(f"   {len(plan.chosen)} {cluster!r} neurons, n = {result['n_examples']} examples, {result['draws']} draws")
    print(f"   checks (plan_restore, no model)      {t_plan:8.3f} s")
    print(f"   cold restore (load + {n_cond} scorings)  {t_cold:8.2f} s   = {t_cold / t_eval:.1f} x one scoring "
          f"({t_eval:.2f} s); overhead beyond {n_cond} scorings {t_cold - n_cond * t_eval:+.2f} s")
    print(f"   put back + undo the chosen neurons   {1000 * t_swap:8.2f} ms")
    print(f"   cached restore                       {t_cached:8.3f} s   = 1/{t_cold / t_cached:.0f} of the cold one")
    for s in result["scopes"].values():
        print(f"   {s['examples']}: accuracy dense {s['dense_accuracy']:.1f} pruned {s['pruned_accuracy']:.1f} "
              f"restored {s['restored_accuracy']:.1f}; recovered {s['recovered_points']:+.2f} of "
              f"{s['lost_points']:.2f} lost points vs random {s['random_recovered_mean']:+.2f} ± "
              f"{s['random_recovered_std']:.2f} (p = {s['p_accuracy']:.3g}); margin recovered "
              f"{s['margin_recovered']:+.3f} of {s['margin_lost']:.3f} nats vs random "
              f"{s['random_margin_recovered_mean']:+.3f} ± {s['random_margin_recovered_std']:.3f} "
              f"(p = {s['p_margin']:.3g})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=str(ROOT / "cache" / "bench-restore"), help="the bench's NSA cache")
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (a run takes minutes)")
    args = parser.parse_args()
    os.environ["NSA_CACHE_DIR"] = args.cache
    torch.set_num_threads(1)
    for name, spec in specs(args.smollm2).items():
        bench(name, spec)


if __name__ == "__main__":
    main()
