"""Causal check of NSA labels (beyond the paper): ablate labelled neurons vs random ones.

For each cluster, the top-n labelled neurons of that cluster (neurons whose label words all belong to it,
ranked by their top selectivity) are zeroed in the dense model (forward-pre-hook on the down projection,
`nsa.neurons.ablate`) and the task accuracy is measured by the evaluator (`nsa.evaluation.run_evaluation`,
lm-evaluation-harness on the in-memory model, so the hooks apply). The control zeroes n random neurons drawn
from the same layers with the same per-layer counts (never the cluster's labelled ones), over `seeds`
seeds (>= 3). Drops are in accuracy points (100 x (baseline - ablated)); `random_drop_std` is the sample
standard deviation over seeds. A label set beats random when its drop exceeds the random mean by more than
two random standard deviations and by more than one example (`beats_random`, reported beside the figures,
not inside them): random controls that all drop the same have sd 0, and one flipped example is no evidence.

Accuracy saturates: a confident model keeps every answer although ablation moved its log-likelihoods. So
each ablation also reports the mean drop of the gold margin, log p(gold) - max log p(other choice), in nats,
over the examples of the cluster's own class when the cluster is a label name (ablating "negative" neurons
should cost confidence on negative examples) and over all examples otherwise (`labelled_margin_drop`,
`random_margin_drop_mean/std`, `beats_random_margin` with the same two-sigma rule).

`loss_accuracy_correlation` relates, across runs (tasks, calibration sets, sparsities), each cluster's
relative activation loss to the run's accuracy drop (Pearson and Spearman).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nsa.errors import NSAError
from nsa.neurons import ablate


@dataclass
class ValidationConfig:
    """`n_neurons` per cluster (None: `share` of the model's MLP neurons, at least 10). A fixed handful is
    invisible in a model with thousands of neurons per layer: 10 of the demo's 2752 neurons moved no answer
    and no margin beyond the random control, while 100 did (negative cluster) — so the default scales."""
    n_neurons: int | None = None
    share: float = 0.02
    seeds: int = 3
    batch_size: int = 16


def task_accuracy(model, tokenizer, task: str, limit: int | None, batch_size: int = 16,
                  sites=None, neurons: dict[int, list[int]] | None = None) -> float:
    """Accuracy (0..1) of `model` on `task` through the evaluator, with `neurons` zeroed when given."""
    return task_scores(model, tokenizer, task, limit, batch_size, sites, neurons)[0]


def task_scores(model, tokenizer, task: str, limit: int | None, batch_size: int = 16, sites=None,
                neurons: dict[int, list[int]] | None = None) -> tuple[float, list[tuple[int, float]]]:
    """(accuracy 0..1, [(gold, gold margin in nats) per example]) with `neurons` zeroed when given."""
    from nsa.evaluation import run_evaluation

    if neurons:
        with ablate(sites, neurons):
            summary, records = run_evaluation(model, tokenizer, task, limit=limit, batch_size=batch_size)
    else:
        summary, records = run_evaluation(model, tokenizer, task, limit=limit, batch_size=batch_size)
    name = task if isinstance(task, str) else task.name
    margins = [(r["gold"], gold_margin(r["loglik"], r["gold"])) for r in records[name]]
    return float(summary["tasks"][name]["acc"]), margins


def gold_margin(loglik: list[float], gold: int) -> float:
    """log p(gold) - max log p(other choice): > 0 when the model answers right, larger when surer."""
    return loglik[gold] - max(v for i, v in enumerate(loglik) if i != gold)


def margin_drop(before: list[tuple[int, float]], after: list[tuple[int, float]], gold: int | None) -> float:
    """Mean margin lost (nats) over the examples whose gold is `gold` (all examples when None)."""
    pairs = [(b, a) for (g, b), (_, a) in zip(before, after) if gold is None or g == gold]
    return sum(b - a for b, a in pairs) / len(pairs) if pairs else 0.0


def cluster_neurons(labels: list[dict], cluster: str, n: int) -> list[tuple[int, int]]:
    """The top-n labelled neurons of `cluster` by top selectivity."""
    mine = [lab for lab in labels if lab["cluster"] == cluster]
    mine.sort(key=lambda lab: -lab["top_selectivity"])
    return [(lab["layer"], lab["index"]) for lab in mine[:n]]


def random_like(chosen: list[tuple[int, int]], sizes: list[int], exclude: set[tuple[int, int]],
                seed: int) -> list[tuple[int, int]]:
    """Random neurons with the same per-layer counts as `chosen`, avoiding `exclude`."""
    rng = random.Random(seed)
    per_layer: dict[int, int] = {}
    for layer, _ in chosen:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    out = []
    for layer, count in sorted(per_layer.items()):
        pool = [i for i in range(sizes[layer]) if (layer, i) not in exclude]
        if len(pool) < count:
            raise NSAError(f"layer {layer} has too few unlabelled neurons ({len(pool)}) for a random control "
                           f"of {count}")
        out += [(layer, i) for i in rng.sample(pool, count)]
    return out


def _as_dict(neurons: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, i in neurons:
        out.setdefault(layer, []).append(i)
    return out


def validate(model, tokenizer, task: str, limit: int | None, sites, sizes: list[int], labels: list[dict],
             clusters: list[str], config: ValidationConfig | None = None,
             progress: Callable | None = None) -> tuple[dict, dict]:
    """(summary `validation` block, details) for each cluster: labelled vs random ablation drops."""
    config = config or ValidationConfig()
    if config.seeds < 3:
        raise NSAError(f"validation needs at least 3 random seeds, got {config.seeds}")
    steps = 1 + len(clusters) * (1 + config.seeds)
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            from nsa.evaluation import ProgressEvent

            progress(ProgressEvent(done / steps, message, "validation"))

    n_ablate = config.n_neurons or max(10, round(config.share * sum(sizes)))
    base, base_margins = task_scores(model, tokenizer, task, limit, config.batch_size)
    tick("validation: baseline accuracy")
    label_names = _label_names(task)
    summary, details = {}, {"baseline_accuracy": base, "clusters": {}}
    for cluster in clusters:
        chosen = cluster_neurons(labels, cluster, n_ablate)
        if not chosen:
            summary[cluster] = {"labelled_drop": None, "random_drop_mean": None, "random_drop_std": None,
                                "n_neurons": 0, "labelled_margin_drop": None, "random_margin_drop_mean": None,
                                "random_margin_drop_std": None}
            details["clusters"][cluster] = {"note": "no labelled neuron in this cluster"}
            done += 1 + config.seeds
            continue
        gold = label_names.index(cluster) if cluster in label_names else None
        acc, margins = task_scores(model, tokenizer, task, limit, config.batch_size, sites, _as_dict(chosen))
        tick(f"validation: ablate {cluster}")
        exclude = {(lab["layer"], lab["index"]) for lab in labels if lab["cluster"] == cluster}
        random_drops, random_margins = [], []
        for seed in range(config.seeds):
            control = random_like(chosen, sizes, exclude, seed)
            r_acc, r_margins = task_scores(model, tokenizer, task, limit, config.batch_size, sites,
                                           _as_dict(control))
            random_drops.append(100.0 * (base - r_acc))
            random_margins.append(margin_drop(base_margins, r_margins, gold))
            tick(f"validation: random control {seed + 1}/{config.seeds} for {cluster}")
        mean, std = _mean_std(random_drops)
        m_mean, m_std = _mean_std(random_margins)
        drop = 100.0 * (base - acc)
        m_drop = margin_drop(base_margins, margins, gold)
        summary[cluster] = {"labelled_drop": drop, "random_drop_mean": mean, "random_drop_std": std,
                            "n_neurons": len(chosen), "labelled_margin_drop": m_drop,
                            "random_margin_drop_mean": m_mean, "random_margin_drop_std": m_std}
        details["clusters"][cluster] = {"ablated_accuracy": acc, "random_drops": random_drops,
                                        "random_margin_drops": random_margins,
                                        "margin_examples": "class " + cluster if gold is not None else "all",
                                        "neurons": [list(x) for x in chosen],
                                        # two random sds, and never less than one example (an
                                        # all-equal control has sd 0: one flip must not "beat" it)
                                        "beats_random": drop > mean + max(2 * std, 100.0 / len(base_margins)),
                                        "beats_random_margin": m_drop > m_mean + 2 * m_std}
    return summary, details


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


def _label_names(task) -> list[str]:
    """The task's class names (empty for tasks without fixed labels)."""
    from nsa.datasets import get_task

    spec = get_task(task) if isinstance(task, str) else task
    return list(getattr(spec, "label_names", None) or [])


# --- activation loss vs accuracy drop across runs -------------------------------------------------------------
def loss_accuracy_correlation(points: list[dict]) -> dict:
    """Per cluster, correlation between relative activation loss and accuracy drop across runs.

    `points`: dicts {"cluster", "relative_lost", "accuracy_drop"} (one per cluster per run). Returns
    {cluster: {"n", "pearson", "spearman"}}; None where fewer than 3 runs or a constant series.
    """
    by_cluster: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p.get("relative_lost") is None or p.get("accuracy_drop") is None:
            continue
        by_cluster.setdefault(p["cluster"], []).append((float(p["relative_lost"]), float(p["accuracy_drop"])))
    out = {}
    for cluster, pairs in by_cluster.items():
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        out[cluster] = {"n": len(pairs), "pearson": _pearson(xs, ys) if len(pairs) >= 3 else None,
                        "spearman": _pearson(_ranks(xs), _ranks(ys)) if len(pairs) >= 3 else None}
    return out


def correlation_from_runs(nsa_dirs: list[str | Path]) -> dict:
    """`loss_accuracy_correlation` over attribution output folders (clusters.jsonl + summary.json each)."""
    points = []
    for folder in nsa_dirs:
        folder = Path(folder)
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        drop = (summary.get("accuracy") or {}).get("drop")
        if drop is None:
            raise NSAError(f"{folder}: no pruned accuracy drop in summary.json (attribution ran without masks)")
        for line in (folder / "clusters.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["level"] == "cluster":
                points.append({"cluster": row["name"], "relative_lost": row["relative_lost"], "accuracy_drop": drop})
    return loss_accuracy_correlation(points)


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def _ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share their mean rank), for Spearman."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks
