"""Task evaluation on lm-evaluation-harness, dense beside pruned, example by example.

`evaluate` runs registered tasks through `lm_eval.simple_evaluate` with an `HFLM` around the in-memory model
(`log_samples=True`), over local task variants generated at run time (`nsa.harness`). Perplexity tasks
(wikitext2, c4) go through `nsa.perplexity`. Outputs in `out_dir`:

- `summary.json`: per task `acc` (and `acc_norm` where the harness task has it), `n`, the harness's
  `acc_stderr`, a 95% Wilson score interval `acc_ci95`, `n_truncated` (examples whose prompt was cut from
  the left to fit the model's context), the prompt and data file; timings and versions.
- `<task>.jsonl`: one record per example from the harness's sample log: `index` (row of the task's split),
  `gold`, `prediction` (argmax of the log-likelihoods), `loglik` (one per choice), `correct` (the harness's
  acc), `truncated`, and for acc_norm tasks `prediction_norm` / `correct_norm`.

`compare(dense_dir, pruned_dir)` gives the accuracy drop with a paired 95% interval and the flips both
ways; `dense_evaluation` computes dense results once per (model, task, prompt + rows, limit) as shared cache
entries (`nsa.artifacts.Entry`, kind "dense-eval", checksummed) and reuses them.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from nsa import datasets as D
from nsa import harness
from nsa.artifacts import Entry, digest, read_json, read_jsonl, versions
from nsa.atomic import write_json, write_jsonl
from nsa.errors import NSAError
from nsa.models import load_model, model_key
from nsa.perplexity import perplexity
from nsa.progress import Report

DEFAULT_BATCH_SIZE = 16
EVAL_FORMAT = 2  # bump when records / summaries change meaning (invalidates cached dense results)
Z95 = 1.959963984540054


# --- evaluate -----------------------------------------------------------------------------------------
def resolve_tasks(tasks: str | D.TaskSpec | list) -> list[D.TaskSpec]:
    """"sst2,imdb" / ["sst2", spec] -> specs (unknown names raise NSAError listing the known ones)."""
    if isinstance(tasks, (str, D.TaskSpec)):
        tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [tasks]
    specs = [D.get_task(t) for t in tasks if not (isinstance(t, str) and not t)]
    if not specs:
        raise NSAError(f"no tasks given; choose from {', '.join(D.list_tasks())}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise NSAError(f"task listed twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return specs


def evaluate(model, tokenizer, tasks, limit: int | None = None, out_dir: str | Path | None = None,
             progress: Callable | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
             max_length: int | None = None, online: bool = False, ppl_seqlen: int | None = None) -> dict:
    """Evaluate `model` on `tasks` through the harness; returns the summary (and writes it to `out_dir`).

    `max_length` overrides the context length (default: the model's max_position_embeddings); longer examples
    are truncated from the left and counted. `online=True` runs the harness's own registered tasks (needs the
    hub) instead of the local variants.
    """
    summary, records = run_evaluation(model, tokenizer, tasks, limit, progress, batch_size, max_length, online,
                                      ppl_seqlen)
    if out_dir is not None:
        write_outputs(out_dir, summary, records)
    return summary


def run_evaluation(model, tokenizer, tasks, limit: int | None = None, progress: Callable | None = None,
                   batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None, online: bool = False,
                   ppl_seqlen: int | None = None, only: set[int] | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """`evaluate` without writing: (summary, {task: records}). `only`: score just the rows of the example set
    with these indices (the validation's class-specific ablations); records keep their `index`."""
    specs = resolve_tasks(tasks)
    D.check_limit(limit)
    for name, value in (("batch_size", batch_size), ("max_length", max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise NSAError(f"{name} must be a positive integer, got {value!r}")
    report = Report(progress, stage="evaluation")
    started = time.time()
    choice_specs = [s for s in specs if s.kind != "perplexity"]
    ppl_specs = [s for s in specs if s.kind == "perplexity"]
    summary: dict[str, Any] = {"model": _model_name(model), "limit": limit, "batch_size": batch_size,
                               "tasks": {}, "timing": {}, "versions": _versions(), "format": EVAL_FORMAT}
    records: dict[str, list[dict]] = {}
    if choice_specs:
        span = len(choice_specs) / len(specs)
        entries, recs, timing = _run_harness(model, tokenizer, choice_specs, limit, batch_size, max_length,
                                             online, report.part(0.0, span), only)
        summary["tasks"].update(entries)
        records.update(recs)
        summary["timing"].update(timing)
    for k, spec in enumerate(ppl_specs):
        lo = (len(choice_specs) + k) / len(specs)
        result = perplexity(model, tokenizer, spec.name, seqlen=ppl_seqlen, batch_size=1, max_windows=limit,
                            progress=report.part(lo, lo + 1 / len(specs)))
        window_nll = result.pop("window_nll")
        summary["tasks"][spec.name] = {"task": spec.name, "kind": spec.kind, "group": spec.group, **result,
                                       "n": result["n_windows"], "metric": "ppl"}
        records[spec.name] = [{"index": i, "nll": v} for i, v in enumerate(window_nll)]
    summary["timing"]["total_s"] = time.time() - started
    summary["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report(1.0, "evaluation done")
    return summary, records


def write_outputs(out_dir: str | Path, summary: dict, tables: dict[str, list[dict]]) -> None:
    """summary.json plus every table as `<name>.jsonl`, each written atomically (the evaluation's records per
    task here; NSA's tables in `nsa.attribution`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    write_json(out / "summary.json", summary)


def _run_harness(model, tokenizer, specs, limit, batch_size, max_length, online, report, only=None):
    if online and any(s.harness_task is None for s in specs):
        raise NSAError("online=True runs the harness's own tasks; these have none: "
                       + ", ".join(s.name for s in specs if s.harness_task is None))
    rows = {} if online else {s.name: [r for r in D.load_examples(s, limit=limit) if only is None or r["index"] in only]
                              for s in specs}
    report(0.0, "starting lm-evaluation-harness")
    t0 = time.time()
    with _quiet_harness():
        import lm_eval

        lm = harness.make_lm(model, tokenizer, batch_size, max_length,
                             on_batch=lambda done, total: report(0.05 + 0.95 * done / max(total, 1),
                                                                 f"{done}/{total} sequences"))
        configs = harness.harness_configs(specs, rows, online=online)
        manager = None if online else harness.task_manager()
        harness.memoize_env_info()
        startup = time.time() - t0
        t1 = time.time()
        # zero-shot log-likelihood scoring needs no seeding: leave the caller's generators alone
        out = lm_eval.simple_evaluate(model=lm, tasks=configs, task_manager=manager, log_samples=True,
                                      bootstrap_iters=1000, limit=limit if online else None, random_seed=None,
                                      numpy_random_seed=None, torch_random_seed=None)
    elapsed = time.time() - t1
    entries, recs = {}, {}
    for spec, config in zip(specs, configs):
        hname = spec.harness_task if online else config["task"]
        recs[spec.name] = _records(spec, out["samples"][hname], lm.nsa_log.truncated, online)
        entries[spec.name] = _task_entry(spec, out["results"][hname], recs[spec.name], lm.max_length, limit,
                                         None if online else config["dataset_kwargs"]["data_files"]["test"])
    log = lm.nsa_log
    timing = {"harness_startup_s": startup, "harness_eval_s": elapsed, "scoring_s": log.seconds,
              "tokens": log.tokens, "sequences": log.total,
              "tokens_per_s": log.tokens / log.seconds if log.seconds > 0 else None}
    return entries, recs, timing


@contextmanager
def _quiet_harness() -> Iterator[None]:
    """The harness logs one warning per truncated request and per config default: keep errors only.
    It also draws from the global `random` / numpy generators: restore the caller's states afterwards."""
    import random

    import datasets
    import numpy as np

    names = ("lm_eval", "lm-eval", "datasets")
    old = {n: logging.getLogger(n).level for n in names}
    bars = datasets.is_progress_bar_enabled()
    rng = (random.getstate(), np.random.get_state())
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        for n, level in old.items():
            logging.getLogger(n).setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _records(spec: D.TaskSpec, samples: list[dict], truncated: set, online: bool = False) -> list[dict]:
    """Per-example records from the harness's sample log (sorted by the row's index)."""
    delim = len(spec.target_delimiter)
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        doc = s["doc"]
        lls = [float(r[0]) for r in s["filtered_resps"]]
        gold = _online_gold(spec, s) if online else D.gold_for(spec, doc)
        rec = {"index": int(doc.get("index", s["doc_id"])), "gold": gold, "prediction": _argmax(lls),
               "loglik": lls, "correct": bool(s["acc"] == 1.0),
               "truncated": any(tuple(a) in truncated for a in s["arguments"])}
        if spec.kind == "classification":
            rec["prediction_label"] = spec.label_names[rec["prediction"]]
        if "acc_norm" in s:  # the harness normalises by the choice's length in characters
            lengths = [len(a[1]) - delim for a in s["arguments"]]
            rec["prediction_norm"] = _argmax([ll / n for ll, n in zip(lls, lengths)])
            rec["correct_norm"] = bool(s["acc_norm"] == 1.0)
        out.append(rec)
    return out


def _online_gold(spec: D.TaskSpec, sample: dict) -> int | None:
    """Gold index of a hub row scored by the harness's own task (its doc_to_target, or the winogrande answer)."""
    target = sample.get("target")
    if spec.partial:
        return int(sample["doc"]["answer"]) - 1
    try:
        return int(target)
    except (TypeError, ValueError):
        return None


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first maximum, as np.argmax


def _task_entry(spec, results: dict, records: list[dict], max_length: int, limit, data_file) -> dict:
    n = len(records)
    entry: dict[str, Any] = {"task": spec.name, "kind": spec.kind, "group": spec.group, "n": n,
                             "harness_task": results.get("alias", ""), "harness_registered_task": spec.harness_task,
                             "synthetic": spec.synthetic}
    for metric in spec.metrics:
        value = results.get(f"{metric},none")
        stderr = results.get(f"{metric}_stderr,none")
        correct_key = "correct" if metric == "acc" else "correct_norm"
        k = sum(r[correct_key] for r in records)
        entry[metric] = value
        entry[f"{metric}_stderr"] = stderr if isinstance(stderr, (int, float)) else None
        entry[f"{metric}_ci95"] = list(wilson_interval(k, n))
    golds = [r["gold"] for r in records]
    entry.update({
        "ci_method": "Wilson score 95% interval on the accuracy; *_stderr is the harness's standard error",
        "n_truncated": sum(r["truncated"] for r in records), "max_length": max_length, "limit": limit,
        "prompt": spec.prompt, "prompt_setting": dict(spec.prompt_setting) or "reference",
        "chat_template": list(spec.chat) if spec.chat else None, "fewshot_rows": list(spec.shot_indices),
        "target_delimiter": spec.target_delimiter,
        "choices": list(spec.label_names) or "per example", "data_file": data_file,
        "majority_baseline": max(golds.count(g) for g in set(golds)) / n if n else None,
    })
    return entry


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (well-behaved at 0 and n, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _model_name(model) -> str:
    return str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)


def _versions() -> dict:
    return versions() | {"datasets": _version("datasets")}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --- reading results ----------------------------------------------------------------------------------
def load_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise NSAError(f"{path} does not exist: not an evaluation folder (run `python -m nsa evaluate` first)")
    return read_json(path)


def load_records(run_dir: str | Path, task: str) -> list[dict]:
    path = Path(run_dir) / f"{task}.jsonl"
    if not path.is_file():
        raise NSAError(f"{path} does not exist: task {task!r} was not evaluated in {run_dir}")
    return read_jsonl(path)


# --- compare ------------------------------------------------------------------------------------------
def compare(dense_dir: str | Path, pruned_dir: str | Path, out_path: str | Path | None = None) -> dict:
    """Dense vs pruned on the tasks both evaluated, matched example by example (by `index`).

    Accuracy drop = dense acc - pruned acc on the shared examples, with a paired 95% normal interval on
    the per-example differences, McNemar's exact p-value, and the flips: indices the dense model got right
    and the pruned one wrong (`lost`) and the reverse (`gained`). Perplexity tasks give both ppl and ratio.
    """
    dense, pruned = load_summary(dense_dir), load_summary(pruned_dir)
    shared = [t for t in dense["tasks"] if t in pruned["tasks"]]
    if not shared:
        raise NSAError(f"{dense_dir} and {pruned_dir} have no task in common "
                       f"({', '.join(dense['tasks'])} vs {', '.join(pruned['tasks'])})")
    result = {"dense_dir": str(dense_dir), "pruned_dir": str(pruned_dir), "tasks": {},
              "ci_method": "paired normal 95% interval on per-example correctness differences"}
    for task in shared:
        if dense["tasks"][task].get("kind") == "perplexity":
            d, p = dense["tasks"][task]["ppl"], pruned["tasks"][task]["ppl"]
            result["tasks"][task] = {"kind": "perplexity", "dense_ppl": d, "pruned_ppl": p, "ppl_ratio": p / d}
            continue
        result["tasks"][task] = compare_records(load_records(dense_dir, task), load_records(pruned_dir, task))
    if out_path is not None:
        write_json(out_path, result)
    return result


def compare_records(dense: list[dict], pruned: list[dict]) -> dict:
    d = {r["index"]: r for r in dense}
    p = {r["index"]: r for r in pruned}
    common = sorted(set(d) & set(p))
    n = len(common)
    if n == 0:
        raise NSAError("dense and pruned records share no example index (different data or limits)")
    diffs = [int(d[i]["correct"]) - int(p[i]["correct"]) for i in common]
    drop = sum(diffs) / n
    var = sum((x - drop) ** 2 for x in diffs) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    lost = [i for i in common if d[i]["correct"] and not p[i]["correct"]]
    gained = [i for i in common if p[i]["correct"] and not d[i]["correct"]]
    changed = [i for i in common if d[i]["prediction"] != p[i]["prediction"]]
    dense_acc = sum(d[i]["correct"] for i in common) / n
    return {"kind": "accuracy", "n": n, "dense_acc": dense_acc, "pruned_acc": dense_acc - drop,
            "drop": drop, "drop_ci95": [drop - half, drop + half], "relative_drop": drop / dense_acc if dense_acc else None,
            "lost": lost, "gained": gained, "n_lost": len(lost), "n_gained": len(gained),
            "prediction_changed": len(changed), "mcnemar_p": mcnemar_exact(len(lost), len(gained)),
            "only_in_dense": len(set(d) - set(p)), "only_in_pruned": len(set(p) - set(d))}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


# --- dense results, computed once ---------------------------------------------------------------------
def task_fingerprint(spec: D.TaskSpec, limit: int | None) -> str:
    """Digest of what decides a task's results besides the model: prompt, choices, metrics and the rows."""
    rows = D.load_examples(spec, limit=limit)
    return digest([EVAL_FORMAT, spec.prompt, list(spec.label_names), spec.target_delimiter, list(spec.metrics),
                   spec.partial, spec.shots, spec.chat, rows], 16)


def dense_entry(model_key: str, spec: D.TaskSpec, limit: int | None) -> Entry:
    return Entry.keyed("dense-eval", EVAL_FORMAT, {"model": model_key, "task": spec.name, "limit": limit,
                                                    "rows": task_fingerprint(spec, limit)})


def dense_evaluation(model_id: str, tasks, limit: int | None = None, out_dir: str | Path | None = None,
                     progress: Callable | None = None, batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
                     dtype: str = "float32", model=None, tokenizer=None, key: str | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Dense results of `model_id` on `tasks`, each computed once per (model, task, prompt + rows, limit).

    Each task is a verified cache entry ("dense-eval"): a missing or corrupted one is (re)computed, the log
    saying why. The model is loaded only when a task must be computed, unless `model`/`tokenizer` are given
    (they must be the dense model). With `out_dir` the combined summary.json and <task>.jsonl are written
    there (a run's eval/dense/).
    """
    specs = resolve_tasks(tasks)
    D.check_limit(limit)
    key = key or model_key(model_id)
    entries = {s.name: dense_entry(key, s, limit) for s in specs}
    problems = {s.name: entries[s.name].problems() for s in specs}
    missing = [s for s in specs if problems[s.name]]
    if missing:
        for spec in missing:
            if problems[spec.name] != ["missing"] and log is not None:
                log(f"dense evaluation of {spec.name} in the cache is bad ({problems[spec.name][0]}): recomputing it")
        if model is None or tokenizer is None:
            model, tokenizer = load_model(model_id, device=device, dtype=dtype)
        fresh, records = run_evaluation(model, tokenizer, missing, limit=limit, progress=progress,
                                        batch_size=batch_size)
        for spec in missing:
            with entries[spec.name].build() as tmp:
                write_jsonl(tmp / f"{spec.name}.jsonl", records[spec.name])
                write_json(tmp / "summary.json", {**fresh, "tasks": {spec.name: fresh["tasks"][spec.name]},
                                                  "model_id": model_id, "model_key": key})
    summary: dict[str, Any] = {"model_id": model_id, "model_key": key, "limit": limit, "tasks": {},
                               "reused": [s.name for s in specs if s not in missing], "format": EVAL_FORMAT}
    for spec in specs:
        part = read_json(entries[spec.name].path("summary.json"))
        summary["tasks"][spec.name] = part["tasks"][spec.name] | {"cache_entry": entries[spec.name].key}
        for field in ("model", "batch_size", "versions"):
            summary.setdefault(field, part.get(field))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for spec in specs:
            shutil.copyfile(entries[spec.name].path(f"{spec.name}.jsonl"), out / f"{spec.name}.jsonl")
        write_json(out / "summary.json", summary)
    return summary
