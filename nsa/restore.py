"""Causal restore experiment (issue #16): put chosen pruned neurons' dense weights back into the pruned model and
measure what that recovers, against random pruned neurons of the same layers.

The mirror image of the validation's ablation (`nsa.validation`): there, labelled neurons are removed from the
dense model; here, pruned neurons (an NSA cluster of the run, or a hand-picked list `L:I,L:I`) get their dense
weights back in the pruned model. For an MLP neuron (L, i) that is row i of the gate and up projections (fc1,
c_fc) and column i of the down projection (fc2, c_proj; GPT-2's Conv1D swaps rows and columns): every entry
the mask removed gets its dense value back, and for a method that changed kept weights (SparseGPT's
weights.safetensors) the whole row and column become dense again. A neuron is "pruned" when at least one of
those entries is masked (`neurons.parquet`: frac_in or frac_out > 0). Attention, embeddings and any bias a
method added (FLAP's compensation) stay as the run pruned them.

The same examples for every condition: the run's evaluated example set of its NSA task (records of the dense
and pruned models come from the run's eval/dense and eval/pruned, never recomputed); only the restored
conditions need forwards — the chosen set, then `draws` (>= 20) random sets of pruned neurons with the same
per-layer counts (`nsa.validation.random_like`, seeded, never a chosen neuron nor, for a cluster, one of the
cluster's labelled neurons). One model load; the neurons are put back in place and taken out again between
conditions (`Restorer`), never by reloading.

Measures, per example set ("all" examples, and the cluster's own class when the cluster is a label name):
accuracy points recovered = restored − pruned accuracy, with "recovered fraction of the lost points" =
recovered / (dense − pruned) when pruning lost accuracy (otherwise stated: nothing was lost); mean gold margin
(log p(gold) − max log p(other), nats) recovered likewise. The test: one-sided Monte Carlo permutation p-value,
p = (1 + #{random draws recovering at least as much}) / (1 + draws) (`nsa.validation.permutation_p`).

The result is JSON, cached as an artifact entry of kind `restore` keyed by the run id, the run's masks (and
weights) sha256, the task's example set, the neurons, the draws and the seed (`restore_run`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import pandas as pd
import torch

from nsa.artifacts import Entry, read_json, read_jsonl
from nsa.atomic import write_json
from nsa.datasets import get_task, prompted
from nsa.errors import NSAError
from nsa.evaluation import DEFAULT_BATCH_SIZE, run_evaluation
from nsa.jobs.runs import run_entry
from nsa.jobs.spec import JobSpec
from nsa.masks import apply_masks, load_masks, load_weights
from nsa.models import check_device, load_model
from nsa.neurons import neuron_sites
from nsa.progress import Report
from nsa.validation import cluster_neurons, gold_margin, mean_std, permutation_p, random_like

RESTORE_FORMAT = 1
MIN_DRAWS = 20
LEVEL = 0.05
TEST_NOTE = ("one-sided Monte Carlo permutation test of what the chosen neurons recover against random pruned "
             "neurons with the same per-layer counts: p = (1 + #random recovering >= chosen) / (1 + draws)")


# --- the configuration ----------------------------------------------------------------------------------
def parse_neurons(text) -> tuple[tuple[int, int], ...]:
    """"L:I,L:I" (or pairs) -> sorted unique ((layer, index), ...); a malformed item is an NSAError naming it."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    out = set()
    for item in items:
        if isinstance(item, str):
            if not item:
                continue
            layer, sep, index = item.partition(":")
            try:
                if not sep:
                    raise ValueError
                pair = (int(layer), int(index))
            except ValueError:
                raise NSAError(f"{item!r} is not a neuron: write LAYER:INDEX, e.g. 2:17", "neurons") from None
        else:
            pair = tuple(int(v) for v in item)
        if len(pair) != 2 or min(pair) < 0:
            raise NSAError(f"{item!r} is not a neuron: layer and index are non-negative integers", "neurons")
        out.add(pair)
    return tuple(sorted(out))


@dataclass(frozen=True)
class RestoreConfig:
    """Which neurons to put back (`neurons` as "L:I,L:I" or pairs, or an NSA `cluster` of the run: its top
    labelled neurons, as many as the run's validation ablated), `draws` random control sets (>= 20) and their
    `seed`. Validated here, once; what needs the run (ids inside the model, pruned, the cluster exists) is
    checked by `plan_restore` before any model loads."""

    neurons: tuple[tuple[int, int], ...] | None = None
    cluster: str | None = None
    draws: int = MIN_DRAWS
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.neurons is None) == (self.cluster is None):
            raise NSAError("give either a cluster or a list of neurons (L:I,L:I,...), not both and not neither",
                           "neurons" if self.neurons is not None else "cluster")
        if self.neurons is not None:
            neurons = parse_neurons(self.neurons)
            if not neurons:
                raise NSAError("an empty selection: give at least one neuron as LAYER:INDEX, e.g. 2:17", "neurons")
            object.__setattr__(self, "neurons", neurons)
        if self.cluster is not None and not str(self.cluster).strip():
            raise NSAError("an empty cluster name (see the run's clusters on the Semantics page)", "cluster")
        for name, low in (("draws", MIN_DRAWS), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = (" (a stable null distribution needs at least 20 random sets; with 20 the smallest p-value "
                       "is 1/21 < 0.05)" if name == "draws" else "")
                raise NSAError(f"must be an integer of at least {low}, got {value!r}{why}", name)

    def to_dict(self) -> dict:
        return {"neurons": None if self.neurons is None else [list(n) for n in self.neurons],
                "cluster": self.cluster, "draws": self.draws, "seed": self.seed}


# --- what the run says (no model needed) ------------------------------------------------------------------
@dataclass
class Plan:
    """A restore experiment on one run, checked against the run's artifacts."""

    run_id: str
    spec: JobSpec
    task: str
    limit: int | None
    chosen: list[tuple[int, int]]
    controls: list[list[tuple[int, int]]]
    skipped: list[tuple[int, int]]  # a cluster's neurons that pruning never touched
    dense_records: list[dict]
    pruned_records: list[dict]
    config: RestoreConfig
    key_parts: dict

    @property
    def what(self) -> str:
        c = self.config.cluster
        return f"{len(self.chosen)} {c!r} neurons" if c else f"{len(self.chosen)} chosen neurons"


def run_file(run_id: str, rel: str, required: bool = True):
    """A verified file of a complete run (size always, hash once per process), or None when optional and absent."""
    entry = run_entry(run_id)
    if not entry.folder.is_dir():
        raise NSAError(f"no complete run {run_id} (list them with `python -m nsa runs`)")
    problem = entry.file_problem(rel)
    if problem in ("missing", "not in the manifest"):
        if required:
            raise NSAError(f"run {run_id} has no {rel}")
        return None
    if problem is not None:
        raise NSAError(f"run {run_id}: {rel} failed verification ({problem}); recompute the run")
    return entry.path(rel)


def _task_of(run_id: str, spec: JobSpec) -> str:
    if spec.nsa is not None:
        return spec.nsa.task
    tasks = [t for t in spec.eval_sets() if get_task(t).kind == "classification"]
    if len(tasks) != 1:
        raise NSAError(f"run {run_id} has no NSA task and evaluates {len(tasks)} classification tasks "
                       f"({', '.join(tasks) or 'none'}): a restore needs one classification task's records")
    return tasks[0]


def _neuron_table(run_id: str) -> tuple[list[int], set[tuple[int, int]]]:
    """(neurons per layer, the pruned ones) from the run's neurons.parquet."""
    df = pd.read_parquet(run_file(run_id, "neurons.parquet"))
    layers = df["layer"].astype(int)
    sizes = [int((layers == layer).sum()) for layer in range(int(layers.max()) + 1)] if len(df) else []
    pruned = {(int(r.layer), int(r.index)) for r in df.itertuples(index=False) if r.frac_in > 0 or r.frac_out > 0}
    return sizes, pruned


def _cluster_choice(run_id: str, spec: JobSpec, cluster: str, sizes: list[int]) -> tuple[list, set]:
    """(the cluster's top labelled neurons, as many as the validation ablates; all its labelled neurons)."""
    if spec.nsa is None or run_file(run_id, "nsa/summary.json", required=False) is None:
        raise NSAError(f"run {run_id} has no NSA results, so it has no clusters: restore chosen neurons with "
                       "--neurons L:I,L:I,... or run NSA (a spec with an nsa: section)", "cluster")
    summary = read_json(run_file(run_id, "nsa/summary.json"))
    clusters = list((summary.get("words") or {}).get("clusters") or [])
    if cluster not in clusters:
        raise NSAError(f"run {run_id} has no cluster {cluster!r}; its clusters: {', '.join(clusters) or 'none'}",
                       "cluster")
    labels = read_jsonl(run_file(run_id, "nsa/neuron_labels.jsonl"))
    n = spec.nsa.options.get("n_ablate") or max(10, round(0.02 * sum(sizes)))  # the validation's count
    chosen = cluster_neurons(labels, cluster, n)
    if not chosen:
        raise NSAError(f"no neuron of run {run_id} is labelled {cluster!r}: nothing to restore "
                       f"(labelled per cluster: {(summary.get('neurons') or {}).get('per_cluster')})", "cluster")
    return chosen, {(lab["layer"], lab["index"]) for lab in labels if lab["cluster"] == cluster}


def plan_restore(run_id: str, config: RestoreConfig) -> Plan:
    """Check `config` against the run and draw the random controls; seconds, no model. Refused with a sentence:
    no NSA (cluster), an unknown cluster (listing the run's), a neuron outside the model or never pruned
    (naming them), a layer with too few other pruned neurons for a layer-matched control."""
    spec = JobSpec.stored(read_json(run_file(run_id, "spec.json")))
    sizes, pruned = _neuron_table(run_id)
    if config.cluster is not None:
        chosen, labelled = _cluster_choice(run_id, spec, config.cluster, sizes)
        skipped = [n for n in chosen if n not in pruned]
        chosen = [n for n in chosen if n in pruned]
        if not chosen:
            raise NSAError(f"pruning kept every weight of the {len(skipped)} top {config.cluster!r} neurons: "
                           "there is nothing to restore", "cluster")
    else:
        chosen, labelled, skipped = list(config.neurons), set(), []
        outside = [f"{layer}:{i}" for layer, i in chosen if layer >= len(sizes) or i >= sizes[layer]]
        if outside:
            shape = f"{sizes[0]} in each" if len(set(sizes)) == 1 else ", ".join(map(str, sizes))
            raise NSAError(f"neuron(s) {', '.join(outside[:10])} are outside the model ({len(sizes)} layers, "
                           f"0..{len(sizes) - 1}; neurons per layer: {shape})", "neurons")
        kept = [f"{layer}:{i}" for layer, i in chosen if (layer, i) not in pruned]
        if kept:
            raise NSAError(f"neuron(s) {', '.join(kept[:10])}{' …' if len(kept) > 10 else ''} were never pruned "
                           "(the run kept all their weights): there is nothing to put back", "neurons")
    exclude = set(chosen) | labelled | {(layer, i) for layer, size in enumerate(sizes) for i in range(size)
                                        if (layer, i) not in pruned}
    need: dict[int, int] = {}
    for layer, _ in chosen:
        need[layer] = need.get(layer, 0) + 1
    for layer, count in sorted(need.items()):
        pool = sum(1 for i in range(sizes[layer]) if (layer, i) not in exclude)
        if pool < count:
            raise NSAError(f"layer {layer} has {pool} other pruned neurons, fewer than the {count} chosen there: no "
                           "layer-matched random control is possible (choose fewer neurons in that layer)")
    controls = [random_like(chosen, sizes, exclude, config.seed * 100_003 + k) for k in range(config.draws)]
    task = _task_of(run_id, spec)
    limit = spec.eval_sets()[task]
    manifest = run_entry(run_id).manifest()["files"]
    records = {which: f"eval/{which}/{task}.jsonl" for which in ("dense", "pruned")}
    dense, pruned_recs = (read_jsonl(run_file(run_id, records[w])) for w in ("dense", "pruned"))
    run_file(run_id, "masks.safetensors")
    key = {"run": run_id, "masks": manifest["masks.safetensors"]["sha256"],
           "weights": (manifest.get("weights.safetensors") or {}).get("sha256"), "task": task, "limit": limit,
           "records": {w: manifest[rel]["sha256"] for w, rel in records.items()}, "cluster": config.cluster,
           "neurons": [list(n) for n in chosen], "draws": config.draws, "seed": config.seed}
    return Plan(run_id, spec, task, limit, chosen, controls, skipped, dense, pruned_recs, config, key)


# --- putting neurons back, in place ----------------------------------------------------------------------
class Restorer:
    """A pruned model whose chosen MLP neurons can be made dense again and pruned again, in place.

    `Restorer.prune(model, masks, weights)` keeps the dense values of the MLP weights (on the CPU, once), then
    prunes the model in place (`nsa.masks.apply_masks`). `put(neurons, dense)` writes rows/columns of those
    neurons from the dense copy (True) or as the run pruned them (False: masked entries zero, SparseGPT's kept
    values); `restored(neurons)` does both around a block, so the model leaves it exactly as pruned."""

    def __init__(self, model, dense: dict[str, torch.Tensor], masks: dict, weights: dict | None):
        self.model, self.dense, self.masks, self.weights = model, dense, masks, weights or {}
        params = dict(model.named_parameters())
        self.parts: dict[int, list[tuple[str, torch.nn.Parameter, int]]] = {}
        for site in neuron_sites(model):
            conv = bool(getattr(site, "conv1d", False))  # Conv1D stores [in, out]: rows and columns swap
            ins = [(name, params[name], 1 if conv else 0) for name in site.in_params if name in params]
            self.parts[site.layer] = ins + [(site.out_param, params[site.out_param], 0 if conv else 1)]

    @classmethod
    def prune(cls, model, masks: dict, weights: dict | None = None) -> "Restorer":
        params = dict(model.named_parameters())
        names = [name for site in neuron_sites(model) for name in [*site.in_params, site.out_param] if name in params]
        dense = {name: params[name].detach().to("cpu", copy=True) for name in names}
        apply_masks(model, masks, weights)
        return cls(model, dense, masks, weights)

    def put(self, neurons, dense: bool) -> None:
        by_layer: dict[int, list[int]] = {}
        for layer, i in neurons:
            by_layer.setdefault(int(layer), []).append(int(i))
        with torch.no_grad():
            for layer, indices in by_layer.items():
                if layer not in self.parts:
                    raise NSAError(f"layer {layer} has no MLP in this model (layers {sorted(self.parts)})")
                idx = torch.as_tensor(sorted(set(indices)), dtype=torch.long)
                for name, param, axis in self.parts[layer]:
                    values = self._values(name, axis, idx, dense)
                    param.index_copy_(axis, idx.to(param.device), values.to(param.device, param.dtype))

    def _values(self, name: str, axis: int, idx: torch.Tensor, dense: bool) -> torch.Tensor:
        if dense:
            return self.dense[name].index_select(axis, idx)
        base = self.weights.get(name, self.dense[name]).index_select(axis, idx)
        if name in self.masks:
            base = base.masked_fill(self.masks[name].index_select(axis, idx).to(torch.bool), 0)
        return base

    @contextlib.contextmanager
    def restored(self, neurons) -> Iterator[None]:
        self.put(neurons, dense=True)
        try:
            yield
        finally:
            self.put(neurons, dense=False)


# --- the experiment ------------------------------------------------------------------------------------
def _outcomes(records: list[dict]) -> dict[int, tuple[bool, int, float]]:
    """{example index: (correct, gold, gold margin)}."""
    return {int(r["index"]): (bool(r["correct"]), int(r["gold"]), gold_margin(r["loglik"], r["gold"]))
            for r in records}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _scope(name: str, idx: list[int], dense: dict, pruned: dict, restored: dict, randoms: list[dict],
           what: str, draws: int) -> dict:
    """Accuracy and margin recovered on the examples `idx`, beside the random draws, with p-values and a verdict."""
    def acc(o):
        return 100.0 * _mean(o[i][0] for i in idx)

    def margin(o):
        return _mean(o[i][2] for i in idx)

    d, p, r = acc(dense), acc(pruned), acc(restored)
    dm, pm, rm = margin(dense), margin(pruned), margin(restored)
    rand = [acc(o) - p for o in randoms]
    rand_m = [margin(o) - pm for o in randoms]
    out = {"examples": name, "n": len(idx), "dense_accuracy": d, "pruned_accuracy": p, "restored_accuracy": r,
           "lost_points": d - p, "recovered_points": r - p,
           "recovered_fraction": (r - p) / (d - p) if d - p > 0 else None,
           "random_recovered_points": rand, "p_accuracy": permutation_p(r - p, rand),
           "dense_margin": dm, "pruned_margin": pm, "restored_margin": rm, "margin_lost": dm - pm,
           "margin_recovered": rm - pm, "margin_recovered_fraction": (rm - pm) / (dm - pm) if dm - pm > 0 else None,
           "random_margin_recovered": rand_m, "p_margin": permutation_p(rm - pm, rand_m)}
    out["random_recovered_mean"], out["random_recovered_std"] = mean_std(rand)
    out["random_margin_recovered_mean"], out["random_margin_recovered_std"] = mean_std(rand_m)
    out["verdict"] = _verdict(out, what, draws)
    return out


def _verdict(s: dict, what: str, draws: int) -> str:
    n = len(s["random_recovered_points"])
    rand = (f"{n} random sets of as many pruned neurons in the same layers recover {s['random_recovered_mean']:+.2f} "
            f"± {s['random_recovered_std']:.2f} (p = {s['p_accuracy']:.3g})")
    if s["lost_points"] > 0:
        acc = (f"restoring the {what} recovers {s['recovered_points']:.2f} of the {s['lost_points']:.2f} accuracy "
               f"points pruning lost ({100 * s['recovered_fraction']:.0f}% of the lost points) on {s['examples']}")
    else:
        acc = (f"pruning lost no accuracy on {s['examples']} (dense {s['dense_accuracy']:.1f}%, pruned "
               f"{s['pruned_accuracy']:.1f}%): nothing was lost; restoring the {what} changes it by "
               f"{s['recovered_points']:+.2f} points")
    if s["margin_lost"] > 0:
        margin = (f"gold margin: {s['margin_recovered']:.3g} of the {s['margin_lost']:.3g} nats lost recovered "
                  f"({100 * s['margin_recovered_fraction']:.0f}%)")
    else:
        margin = f"gold margin: nothing was lost; it changes by {s['margin_recovered']:+.3g} nats"
    margin += (f", random {s['random_margin_recovered_mean']:+.3g} ± {s['random_margin_recovered_std']:.2g} "
               f"(p = {s['p_margin']:.3g})")
    return f"{acc}; {rand}; {margin} [n = {s['n']} examples, {draws} draws]"


def restore_experiment(model, tokenizer, task_spec, limit: int | None, restorer: Restorer,
                       chosen: list[tuple[int, int]], controls: list[list[tuple[int, int]]],
                       dense_records: list[dict], pruned_records: list[dict], what: str = "chosen neurons",
                       class_name: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                       progress: Callable | None = None) -> dict:
    """Evaluate the pruned model with `chosen` restored, then with each control set restored, on the example set
    of the records (the dense and pruned conditions are the records themselves). Returns the scopes ("all", and
    `class_name`'s examples when given) with accuracy and margin recovered, random baselines and p-values."""
    report = Report(progress, stage="restore")
    dense, pruned = _outcomes(dense_records), _outcomes(pruned_records)
    if set(dense) != set(pruned):
        raise NSAError("the run's dense and pruned records cover different examples; recompute the run")
    sets = [chosen, *controls]
    outcomes = []
    for k, neurons in enumerate(sets):
        label = "chosen neurons" if k == 0 else f"random draw {k}/{len(controls)}"
        with restorer.restored(neurons):
            _summary, records = run_evaluation(model, tokenizer, task_spec, limit=limit, batch_size=batch_size,
                                               progress=report.part(k / len(sets), (k + 1) / len(sets)))
        got = _outcomes(records[task_spec.name])
        if set(got) != set(dense):
            raise NSAError(f"the restored model was scored on other examples than the run's ({len(got)} vs "
                           f"{len(dense)}): the task's data changed since the run; recompute it")
        outcomes.append(got)
        report((k + 1) / len(sets), f"restored {label}")
    idx = sorted(dense)
    scopes = {"all": _scope(f"all {len(idx)} examples", idx, dense, pruned, outcomes[0], outcomes[1:], what,
                            len(controls))}
    label_names = list(task_spec.label_names or [])
    if class_name in label_names:
        gold = label_names.index(class_name)
        mine = [i for i in idx if dense[i][1] == gold]
        if mine:
            scopes[class_name] = _scope(f"the {len(mine)} {class_name} examples", mine, dense, pruned, outcomes[0],
                                        outcomes[1:], what, len(controls))
    return {"scopes": scopes, "n_examples": len(idx), "draws": len(controls), "test": TEST_NOTE}


def compute(plan: Plan, progress: Callable | None = None, device: str | None = None) -> dict:
    """Load the run's model once, prune it in place with the run's masks, run the experiment."""
    started = time.time()
    report = Report(progress, stage="restore")
    device = device or plan.spec.device
    check_device(device)
    report(0.0, f"loading {plan.spec.model}")
    model, tokenizer = load_model(plan.spec.model, device=device, dtype=plan.spec.dtype)
    weights_path = run_file(plan.run_id, "weights.safetensors", required=False)
    restorer = Restorer.prune(model, load_masks(run_file(plan.run_id, "masks.safetensors")),
                              load_weights(weights_path))
    task_spec = prompted(plan.task, plan.spec.prompt, tokenizer, plan.limit)
    result = restore_experiment(model, tokenizer, task_spec, plan.limit, restorer, plan.chosen, plan.controls,
                                plan.dense_records, plan.pruned_records, plan.what, plan.config.cluster,
                                progress=report.part(0.05, 1.0))
    primary = result["scopes"].get(plan.config.cluster) or result["scopes"]["all"]
    result.update(run_id=plan.run_id, task=plan.task, limit=plan.limit, config=plan.config.to_dict(),
                  selection={"cluster": plan.config.cluster, "neurons": [list(n) for n in plan.chosen],
                             "n_neurons": len(plan.chosen), "never_pruned": [list(n) for n in plan.skipped]},
                  controls=[[list(n) for n in c] for c in plan.controls], seed=plan.config.seed, level=LEVEL,
                  verdict=result["scopes"]["all"]["verdict"], primary=primary["examples"],
                  timing_s=time.time() - started, device=device)
    return result


def restore_entry(plan: Plan) -> Entry:
    return Entry.keyed("restore", RESTORE_FORMAT, plan.key_parts)


def cached_restore(run_id: str, config: RestoreConfig) -> dict | None:
    """The cached result of this experiment, or None when it was never computed (no model is loaded)."""
    entry = restore_entry(plan_restore(run_id, config))
    return read_json(entry.path("result.json")) if entry.complete() else None


def restore_run(run_id: str, config: RestoreConfig, progress: Callable | None = None,
                device: str | None = None) -> dict:
    """The restore experiment on a run: checked in seconds (`plan_restore`), then read from the cache or computed
    once (`compute`) and cached as a `restore` artifact entry (JSON)."""
    plan = plan_restore(run_id, config)
    entry = restore_entry(plan)
    report = Report(progress, stage="restore")
    reused = entry.complete()
    entry.ensure(lambda tmp: write_json(tmp / "result.json", compute(plan, progress, device)), log=report.log)
    result = read_json(entry.path("result.json"))
    result["cache"] = {"entry": entry.key, "reused": reused}
    report(1.0, f"restore {'reused from' if reused else 'written to'} the cache (restore/{entry.key})")
    return result
