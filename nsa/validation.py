"""Causal check of NSA labels (beyond the paper): ablate labelled neurons vs random ones, with a p-value.

For each cluster, the top-n labelled neurons of that cluster (neurons whose label words all belong to it,
ranked by their top selectivity) are zeroed in the dense model (forward-pre-hook on the down projection,
`nsa.neurons.ablate`) and the task is scored by the evaluator (`nsa.evaluation.run_evaluation`, the harness on
the in-memory model, so the hooks apply) on the run's example set. The baseline is the dense evaluation's own
records of that set (no second evaluation). The null distribution: `draws` (>= 20) sets of n random neurons
with the same per-layer counts, never the cluster's labelled ones.

The primary measure is the gold margin, log p(gold) - max log p(other choice), in nats, averaged over the
examples of the cluster's own class when the cluster is a label name (ablating "negative" neurons should cost
confidence on negative examples) and over all examples otherwise: accuracy saturates on a confident model,
which keeps its answers although ablation moved its log-likelihoods. Accuracy drop (points) is reported beside.
The test: a one-sided Monte Carlo permutation p-value, p = (1 + #{random draws losing at least as much margin})
/ (1 + draws); a label set is `validated` when p < `level` (0.05). With 20 draws the smallest possible p is
1/21 ≈ 0.048: every random set must lose less than the labelled one.

Sequential stopping (default; `sequential=False` draws all): a cluster's draws stop at the h-th random set that
loses at least as much margin as the labelled one, h = max(2, ceil(level * draws)), and p = h / l after l draws
(Besag & Clifford 1991, "Sequential Monte Carlo p-values", Biometrika 78:301); a cluster that never reaches h
exceedances gets every draw and the usual p = (1 + g) / (1 + draws). Both p-values are valid, and the verdict is
the one all draws would give: h exceedances already put the full test's p at >= (1 + h) / (1 + draws) >= level.
Draws are seeded 0, 1, 2, ... so a stopped cluster's draws are the first l of the full test's. Why: on a real
model a scoring is seconds, 42 of them were two thirds of the app's default job, and labels that do not hold
are decided after a few draws. At least two draws are always made (a spread needs two).

`loss_accuracy_correlation` relates, across runs (tasks, calibration sets, sparsities), each cluster's
relative activation loss to the run's accuracy drop (Pearson and Spearman).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.evaluation import run_evaluation
from nsa.neurons import ablate
from nsa.progress import Report

TEST_NOTE = ("one-sided Monte Carlo permutation test of the gold-margin drop against random neuron sets with the "
             "same per-layer counts: p = (1 + #random >= labelled) / (1 + draws)")
SEQUENTIAL_NOTE = ("; sequential (Besag-Clifford): a cluster's draws stop at the h-th random set losing at least as "
                   "much, h = max(2, ceil(level x draws)), p = h / draws made (same verdict as every draw)")


@dataclass
class ValidationConfig:
    """`n_neurons` per cluster (None: `share` of the model's MLP neurons, at least 10). A fixed handful is
    invisible in a model with thousands of neurons per layer: 10 of the demo's 2752 neurons moved no answer
    and no margin beyond the random control, while 100 did (negative cluster) — so the default scales."""
    n_neurons: int | None = None
    share: float = 0.02
    draws: int = 20
    batch_size: int = 16
    level: float = 0.05
    sequential: bool = True

    def stop_after(self) -> int | None:
        """Exceedances h at which a cluster's draws stop (None: never stop early)."""
        return max(2, math.ceil(self.level * self.draws)) if self.sequential else None


def task_scores(model, tokenizer, spec, limit: int | None, batch_size: int = 16, sites=None,
                neurons: dict[int, list[int]] | None = None,
                only: set[int] | None = None) -> tuple[float, list[tuple[int, float]]]:
    """(accuracy 0..1, [(gold, gold margin in nats) per example]) with `neurons` zeroed when given, on the
    example set's rows (only those whose index is in `only`, when given)."""
    with ablate(sites, neurons or {}):
        _summary, records = run_evaluation(model, tokenizer, spec, limit=limit, batch_size=batch_size, only=only)
    return scores_of(records[spec.name])


def scores_of(records: list[dict]) -> tuple[float, list[tuple[int, float]]]:
    """(accuracy, [(gold, gold margin)]) of evaluation records (sorted by example index)."""
    records = sorted(records, key=lambda r: r["index"])
    acc = sum(bool(r["correct"]) for r in records) / len(records) if records else 0.0
    return acc, [(r["gold"], gold_margin(r["loglik"], r["gold"])) for r in records]


def gold_margin(loglik: list[float], gold: int) -> float:
    """log p(gold) - max log p(other choice): > 0 when the model answers right, larger when surer."""
    return loglik[gold] - max(v for i, v in enumerate(loglik) if i != gold)


def margin_drop(before: list[tuple[int, float]], after: list[tuple[int, float]]) -> float:
    """Mean margin lost (nats) over paired examples (the same example set, in the same order)."""
    return sum(b - a for (_, b), (_, a) in zip(before, after)) / len(before) if before else 0.0


def above_chance(records: list[dict], level: float = 0.05) -> dict:
    """Is the model's accuracy on these records significantly above chance? Chance is the majority class's share
    of the examples (the best constant guess); one-sided exact binomial test. An interpretation of a model that
    does not do the task (labels, flips) describes noise: the pages warn and NSA labels nothing by default."""
    n = len(records)
    k = sum(bool(r["correct"]) for r in records)
    golds = [r["gold"] for r in records]
    chance = max(golds.count(g) for g in set(golds)) / n if n else 0.0
    p = binomial_tail(k, n, chance) if n else 1.0
    return {"accuracy": k / n if n else None, "n": n, "chance": chance, "p_value": p, "above_chance": p < level,
            "test": "one-sided exact binomial test of the accuracy against the majority-class rate"}


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (exact for any n this tool sees)."""
    if p <= 0.0:
        return 1.0 if k <= 0 else 0.0
    if p >= 1.0:
        return 1.0
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
             + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def permutation_p(observed: float, null: list[float]) -> float:
    """One-sided Monte Carlo p-value of `observed` being at least this large under the `null` draws."""
    return (1 + sum(x >= observed for x in null)) / (1 + len(null))


def sequential_p(observed: float, null: list[float], draws: int, stop_after: int | None) -> float:
    """Besag-Clifford p-value: h / l when the draws stopped at the h-th exceedance after l < `draws` draws,
    else the fixed-sample `permutation_p` (every draw made)."""
    exceed = sum(x >= observed for x in null)
    if stop_after is not None and exceed >= stop_after and len(null) < draws:
        return exceed / len(null)
    return permutation_p(observed, null)


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


def validate(model, tokenizer, spec, limit: int | None, sites, sizes: list[int], labels: list[dict],
             clusters: list[str], dense_records: list[dict], config: ValidationConfig | None = None,
             progress: Callable | None = None) -> tuple[dict, dict]:
    """(summary `validation` block, details) per cluster: labelled vs random ablation, margin and accuracy,
    with the permutation p-value and a verdict sentence. `dense_records`: the evaluation's records of the
    example set (the baseline). A cluster named after a label is scored on that class's examples only (its
    margin is measured there, and so is its accuracy figure): half the work of scoring every example."""
    config = config or ValidationConfig()
    if config.draws < 20:
        raise NSAError(f"validation needs at least 20 random draws for a stable null, got {config.draws}")
    spec = D.get_task(spec)
    report = Report(progress, stage="validation")
    steps, done = len(clusters) * (1 + config.draws), 0
    n_ablate = config.n_neurons or max(10, round(config.share * sum(sizes)))
    label_names = list(spec.label_names or [])
    base_acc, _ = scores_of(dense_records)
    summary, details = {}, {"baseline_accuracy": base_acc, "n_examples": len(dense_records), "draws": config.draws,
                            "test": TEST_NOTE + (SEQUENTIAL_NOTE if config.sequential else ""), "level": config.level, "clusters": {}}
    for cluster in clusters:
        chosen = cluster_neurons(labels, cluster, n_ablate)
        if not chosen:
            summary[cluster] = _empty_cluster()
            details["clusters"][cluster] = {"note": "no labelled neuron in this cluster",
                                            "verdict": f"no neuron is labelled {cluster!r}: nothing to test"}
            done += 1 + config.draws
            continue
        gold = label_names.index(cluster) if cluster in label_names else None
        records = [r for r in dense_records if gold is None or r["gold"] == gold]
        only = None if gold is None else {r["index"] for r in records}
        base, base_margins = scores_of(records)
        acc, margins = task_scores(model, tokenizer, spec, limit, config.batch_size, sites, _as_dict(chosen), only)
        done += 1
        report(done / steps, f"validation: ablate {cluster}")
        exclude = {(lab["layer"], lab["index"]) for lab in labels if lab["cluster"] == cluster}
        m_drop, stop = margin_drop(base_margins, margins), config.stop_after()
        random_drops, random_margins = [], []
        for seed in range(config.draws):
            control = random_like(chosen, sizes, exclude, seed)
            r_acc, r_margins = task_scores(model, tokenizer, spec, limit, config.batch_size, sites,
                                           _as_dict(control), only)
            random_drops.append(100.0 * (base - r_acc))
            random_margins.append(margin_drop(base_margins, r_margins))
            done += 1
            report(done / steps, f"validation: random draw {seed + 1}/{config.draws} for {cluster}")
            if stop is not None and sum(x >= m_drop for x in random_margins) >= stop:
                done += config.draws - seed - 1  # decided: the remaining draws cannot make it validated
                break
        drop, made = 100.0 * (base - acc), len(random_margins)
        mean, std = mean_std(random_drops)
        m_mean, m_std = mean_std(random_margins)
        p_margin = sequential_p(m_drop, random_margins, config.draws, stop)
        p_acc = permutation_p(drop, random_drops)  # over the draws made
        validated = p_margin < config.level
        stopped = (f"; stopped after {made} of {config.draws} draws, decided by {stop} random sets losing at "
                   "least as much (sequential test)") if made < config.draws else ""
        summary[cluster] = {"labelled_drop": drop, "random_drop_mean": mean, "random_drop_std": std,
                            "n_neurons": len(chosen), "labelled_margin_drop": m_drop,
                            "random_margin_drop_mean": m_mean, "random_margin_drop_std": m_std,
                            "p_margin": p_margin, "p_accuracy": p_acc, "validated": validated,
                            "n_examples": len(records), "draws": made}
        scope = f"the {len(records)} {cluster} examples" if gold is not None else f"all {len(records)} examples"
        details["clusters"][cluster] = {
            "ablated_accuracy": acc, "baseline_accuracy": base, "random_drops": random_drops,
            "random_margin_drops": random_margins, "margin_examples": scope, "neurons": [list(x) for x in chosen],
            "verdict": (f"{'validated' if validated else 'not validated'}: ablating the {len(chosen)} top "
                        f"{cluster!r} neurons costs {m_drop:.3g} nats of gold margin on {scope}; random sets of "
                        f"{len(chosen)} cost {m_mean:.2g} ± {m_std:.2g} (p = {p_margin:.3g}, {made} draws{stopped}; "
                        f"accuracy drop {drop:.2f} vs {mean:.2f} ± {std:.2f} points, p = {p_acc:.3g})")}
    return summary, details


def _empty_cluster() -> dict:
    return {"labelled_drop": None, "random_drop_mean": None, "random_drop_std": None, "n_neurons": 0,
            "labelled_margin_drop": None, "random_margin_drop_mean": None, "random_margin_drop_std": None,
            "p_margin": None, "p_accuracy": None, "validated": None, "n_examples": 0, "draws": 0}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))


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
