"""A run's artifacts as dataframes for the app's pages (no streamlit here, no science: only reading, joining and
aggregating what the pipeline wrote).

Sized for 7B runs: every loader is memoised on (file, mtime, size), so a page re-render costs a dict lookup; the
per-module sparsity and mask overlaps, which need a pass over the masks, are computed one tensor at a time
(safetensors `safe_open`) and kept as small parquet files under `cache/app/<run_id>/`; tables are paginated
(`page_of`) and distributions aggregated into histograms (`fraction_histogram`) before they reach a browser.

A missing or unreadable artifact raises `ArtifactError` (an `NSAError` that names the run, the artifact and
whether re-submitting the run's spec would recompute it); pages show it with an offer to recompute.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from nsa.artifacts import Entry, read_jsonl
from nsa.damage import DamageConfig, DamageReport, damaged_words
from nsa.datasets import get_task, load_examples, prompt_for
from nsa.errors import NSAError
from nsa.jobs import runs
from nsa.jobs.runs import ArtifactError, artifact_sha, existing_run, run_artifact, run_entry
from nsa.neuron_export import fraction_columns
from nsa.validation import above_chance, loss_accuracy_correlation
from pruners import PruneError, get_method
from pruners.families import mlp_sites_from_names

HIST_BINS = 20
_LAYER_RE = re.compile(r"\.(?:layers|h|layer|decoder\.layers)\.(\d+)\.(.+?)(?:\.weight)?$")


def run_folder(run_id: str) -> Path:
    """The folder of a complete run (the one locator, `nsa.jobs.runs.run_entry`)."""
    return existing_run(run_id).folder


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def _artifact(run_id: str, rel: str, required: bool = True) -> Path | None:
    return run_artifact(run_id, rel, required)


@functools.lru_cache(maxsize=256)
def _read_json_cached(stamp: tuple) -> Any:
    return json.loads(Path(stamp[0]).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=128)
def _read_jsonl_cached(stamp: tuple) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(Path(stamp[0])))


@functools.lru_cache(maxsize=64)
def _read_parquet_cached(stamp: tuple) -> pd.DataFrame:
    return pd.read_parquet(stamp[0])


def _load(run_id: str, rel: str, reader: Callable, required: bool = True) -> Any:
    path = _artifact(run_id, rel, required)
    if path is None:
        return None
    try:
        return reader(_stamp(path))
    except (ValueError, OSError) as err:
        raise ArtifactError(run_id, rel, f"is corrupt ({type(err).__name__}: {str(err)[:200]})") from None


def read_json(run_id: str, rel: str, required: bool = True) -> Any:
    return _load(run_id, rel, _read_json_cached, required)


def read_table(run_id: str, rel: str, required: bool = True) -> pd.DataFrame | None:
    """A JSONL or parquet artifact as a dataframe (a copy-free cached object: do not modify it in place)."""
    reader = _read_parquet_cached if rel.endswith(".parquet") else _read_jsonl_cached
    return _load(run_id, rel, reader, required)


@dataclass
class RunSummary:
    run_id: str
    model: str
    method: str
    sparsity: float
    pattern: str
    calibration: str
    tasks: str
    created: str
    has_eval: bool
    has_nsa: bool


def runs_table() -> pd.DataFrame:
    """`nsa.jobs.runs.list_runs` as a table for the pages: one row per run folder with a manifest, newest
    first."""
    rows = []
    for info in runs.list_runs():
        if info.spec is None or not info.created:
            continue
        files = (run_entry(info.id).manifest() or {}).get("files", {})
        rows.append(RunSummary(**_describe(info.id, info.spec), created=info.created,
                               has_eval="eval/comparison.json" in files, has_nsa="nsa/summary.json" in files).__dict__)
    df = pd.DataFrame(rows, columns=list(RunSummary.__dataclass_fields__))
    return df.sort_values("created", ascending=False, ignore_index=True)


def _describe(run_id: str, spec: dict) -> dict:
    prune = spec.get("prune") or {}
    calib = spec.get("calibration") or {}
    tasks = (spec.get("evaluate") or {}).get("tasks") or []
    return {"run_id": run_id, "model": str(spec.get("model", "?")), "method": str(prune.get("method", "?")),
            "sparsity": float(prune.get("sparsity", 0.0)), "pattern": str(prune.get("pattern", "")),
            "calibration": f"{calib.get('source', '-')}" if calib else "-", "tasks": ", ".join(tasks)}


def describe(spec: dict, tag: str = "") -> str:
    """A run's experiment in one line, naming what tells runs apart: method, sparsity, pattern, options that
    differ from the method's defaults, calibration source, size and seed, model, prompt setting, tasks, NSA."""
    prune = spec.get("prune") or {}
    method = str(prune.get("method", "?"))
    head = f"{method} {float(prune.get('sparsity', 0)):.0%}"
    if prune.get("pattern", "unstructured") != "unstructured":
        head += f" {prune['pattern']}"
    if prune.get("sparsity_profile", "uniform") not in ("uniform", None):
        head += f" {prune['sparsity_profile']}"
    try:
        defaults = {o.name: o.default for o in get_method(method).options}
    except PruneError:
        defaults = {}
    changed = [f"{k}={v}" for k, v in sorted((prune.get("options") or {}).items()) if defaults.get(k) != v]
    parts = [head + (f" ({', '.join(changed)})" if changed else "")]
    calib = spec.get("calibration")
    if calib:
        parts.append(f"{calib.get('source')} {calib.get('nsamples')}×{calib.get('seqlen')} seed {calib.get('seed')}")
    model = str(spec.get("model", "?"))
    parts.append("demo" if model == "demo" else Path(model).name.removesuffix(".gguf"))
    prompt = spec.get("prompt")
    if prompt:
        text = prompt.get("template", "reference")
        shots = prompt.get("num_fewshot") or 0
        parts.append(("prompt " + (text if len(text) < 20 else text[:17] + "…")) + (f", {shots}-shot" if shots else "")
                     + (", chat" if prompt.get("chat") else ""))
    evaluate = spec.get("evaluate") or {}
    if evaluate.get("tasks"):
        limit = evaluate.get("limit")
        parts.append(f"{len(evaluate['tasks'])} task{'s' if len(evaluate['tasks']) > 1 else ''}"
                     + (f" ×{limit}" if limit else ""))
    nsa = spec.get("nsa")
    if nsa:
        parts.append(f"NSA {nsa.get('task')}" + (f" ×{nsa['limit']}" if nsa.get("limit") else ""))
    label = " · ".join(parts)
    return f"[{tag}] {label}" if tag else label


def run_label(run_id: str) -> str:
    try:
        text = describe(spec(run_id), runs.tags().get(run_id, ""))
    except NSAError:
        return run_id
    return f"{run_id[:8]} · {text}"


def spec(run_id: str) -> dict:
    return read_json(run_id, "spec.json")


# --- masks: per-module sparsity and overlaps ---------------------------------------------------------------
APP_FORMAT = 1


def split_param(name: str) -> tuple[int, str] | None:
    """`model.layers.3.mlp.gate_proj.weight` -> (3, "mlp.gate_proj"); None for non-layer parameters."""
    m = _LAYER_RE.search(name)
    return (int(m.group(1)), m.group(2)) if m else None


def _source_sha(run_id: str, rel: str) -> str:
    return artifact_sha(run_id, rel)  # verified before anything is derived from it


def _derived(table: str, sources: dict[str, tuple[str, str]], build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """A table computed from verified run artifacts, kept as a shared cache entry ("app") keyed by the
    artifacts' checksums: rebuilt only when a source changes, and verified like every other entry."""
    entry = Entry.keyed("app", APP_FORMAT, {"table": table,
                                            "sources": {k: _source_sha(*v) for k, v in sources.items()}})

    def fill(tmp: Path) -> None:
        try:
            df = build()
        except (ValueError, OSError, RuntimeError) as err:
            run_id, rel = next(iter(sources.values()))
            raise ArtifactError(run_id, rel, f"could not be read ({type(err).__name__}: {str(err)[:200]})") from None
        df.to_parquet(tmp / "table.parquet", index=False)

    entry.ensure(fill)
    return _read_parquet_cached(_stamp(entry.path("table.parquet")))


def _sparsity_table(path: Path) -> pd.DataFrame:
    rows = []
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            where = split_param(key)
            if where is None:
                continue
            t = f.get_tensor(key)
            rows.append({"layer": where[0], "module": where[1], "param": key, "numel": t.numel(),
                         "pruned": int(t.sum(dtype=torch.int64))})
    df = pd.DataFrame(rows, columns=["layer", "module", "param", "numel", "pruned"])
    df["sparsity"] = df["pruned"] / df["numel"].clip(lower=1)
    return df.sort_values(["layer", "module"], ignore_index=True)


def module_sparsity(run_id: str) -> pd.DataFrame:
    """One row per pruned weight: layer, module, param, numel, pruned, sparsity."""
    return _derived("module_sparsity", {"masks": (run_id, "masks.safetensors")},
                    lambda: _sparsity_table(_artifact(run_id, "masks.safetensors")))


def sparsity_matrix(run_id: str) -> pd.DataFrame:
    """layer × module sparsity (rows: layers, columns: modules) for the heatmap."""
    df = module_sparsity(run_id)
    return df.pivot_table(index="layer", columns="module", values="sparsity", aggfunc="mean").sort_index()


def layer_plan(run_id: str) -> tuple[str, pd.DataFrame] | None:
    """(how the sparsity was spread, one row per decoder layer: the sparsity it was pruned to, OWL's outlier ratio
    in percent) from stats.json; None for runs written before per-layer sparsities were recorded."""
    stats = read_json(run_id, "stats.json", required=False) or {}
    if "layer_sparsity" not in stats:
        return None
    df = pd.DataFrame({"layer": range(len(stats["layer_sparsity"])), "sparsity": stats["layer_sparsity"]})
    if "outlier_ratio_percent" in stats:
        df["outlier_ratio_percent"] = stats["outlier_ratio_percent"]
    how = stats.get("sparsity_profile") or ("structured: " + stats.get("structured", {}).get("kind", "?"))
    return how, df


def mask_jaccard(run_a: str, run_b: str) -> pd.DataFrame:
    """Per layer and module, |A ∩ B| / |A ∪ B| of the pruned entries of two runs' masks (same model)."""
    run_a, run_b = sorted([run_a, run_b])
    a_path, b_path = _artifact(run_a, "masks.safetensors"), _artifact(run_b, "masks.safetensors")

    def build() -> pd.DataFrame:
        rows = []
        with safe_open(str(a_path), framework="pt") as fa, safe_open(str(b_path), framework="pt") as fb:
            common = sorted(set(fa.keys()) & set(fb.keys()))
            if not common:
                raise ValueError(f"runs {run_a} and {run_b} share no mask names (different models?)")
            for name in common:
                where = split_param(name)
                if where is None:
                    continue
                x, y = fa.get_tensor(name).bool(), fb.get_tensor(name).bool()
                if x.shape != y.shape:
                    continue
                union = int((x | y).sum())
                rows.append({"layer": where[0], "module": where[1],
                             "jaccard": int((x & y).sum()) / union if union else 1.0})
        return pd.DataFrame(rows, columns=["layer", "module", "jaccard"])

    return _derived("mask_jaccard", {"a": (run_a, "masks.safetensors"), "b": (run_b, "masks.safetensors")}, build)


# --- neurons -----------------------------------------------------------------------------------------------
def neurons(run_id: str) -> pd.DataFrame:
    """One row per MLP neuron: layer, index, frac_in, frac_out, frac (mean of both), removed, label, cluster, shift_abs,
    shift_rel, label_survives (NSA columns empty for unlabelled neurons or runs without NSA)."""
    base = read_table(run_id, "neurons.parquet")
    labels = read_table(run_id, "nsa/neuron_labels.jsonl", required=False)
    shift = read_table(run_id, "nsa/neuron_shift.jsonl", required=False)
    stamps = tuple(_stamp(p) if p is not None else None for p in (
        _artifact(run_id, "neurons.parquet"), _artifact(run_id, "nsa/neuron_labels.jsonl", required=False),
        _artifact(run_id, "nsa/neuron_shift.jsonl", required=False)))
    return _neurons_joined(stamps, base, labels, shift)


_JOIN_CACHE: dict = {}


def _neurons_joined(key: tuple, base, labels, shift) -> pd.DataFrame:
    """The joined table, memoised on the three files' (path, mtime, size)."""
    if key in _JOIN_CACHE:
        return _JOIN_CACHE[key]
    df = fraction_columns(base)
    df["label"], df["cluster"] = "", ""
    df["selectivity"] = np.nan
    df["shift_abs"], df["shift_rel"] = np.nan, np.nan
    if labels is not None and len(labels):
        lab = labels[["layer", "index", "label", "cluster"]].assign(
            selectivity=labels["top_selectivity"] if "top_selectivity" in labels else np.nan)
        df = df.drop(columns=["label", "cluster", "selectivity"]).merge(lab, on=["layer", "index"], how="left")
        df[["label", "cluster"]] = df[["label", "cluster"]].fillna("")
    if shift is not None and len(shift):
        sh = shift[["layer", "index", "shift_abs", "shift_rel"]]
        df = df.drop(columns=["shift_abs", "shift_rel"]).merge(sh, on=["layer", "index"], how="left")
    if len(_JOIN_CACHE) > 16:
        _JOIN_CACHE.clear()
    _JOIN_CACHE[key] = df
    return df


NEURON_HELP = {
    "frac_in": "share of the neuron's row in the input weights (gate and up) that pruning removed",
    "frac_out": "share of the neuron's column in the down projection that pruning removed",
    "frac": "mean of frac_in and frac_out",
    "removed": "the neuron's whole input rows (gate and up) or its whole output column (down) are pruned: it "
               "computes nothing (a structured method removed it)",
    "auc": "detection AUC of the label on held-out examples (computed on request; see the method above the table)",
    "label": "NSA label: the neuron's most selective significant words (cluster: words)",
    "selectivity": "the label's top selectivity: (mean activation on the word − mean over all text tokens) / sd",
    "shift_abs": "pruned − dense mean activation on its label words",
    "shift_rel": "shift_abs / |dense mean activation|",
}


def filter_neurons(df: pd.DataFrame, layer: int | None = None, labelled_only: bool = False,
                   min_frac: float = 0.0, text: str = "") -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    if layer is not None:
        mask &= df["layer"].to_numpy() == layer
    if labelled_only:
        mask &= df["label"].to_numpy() != ""
    if min_frac > 0:
        mask &= df["frac"].to_numpy() >= min_frac
    if text:
        mask &= df["label"].str.contains(text, case=False, regex=False).to_numpy()
    return df[mask]


def page_of(df: pd.DataFrame, sort: str, descending: bool, page: int, size: int) -> tuple[pd.DataFrame, int]:
    """Rows of page `page` (0-based) after sorting by `sort`; returns (rows, number of pages). Uses a partial
    sort (nlargest/nsmallest) for the first pages so a 352k-row table costs milliseconds."""
    n_pages = max(1, -(-len(df) // size))
    page = min(max(page, 0), n_pages - 1)
    if sort not in df.columns:
        sort = "layer"
    need = (page + 1) * size
    if need <= 10 * size and pd.api.types.is_numeric_dtype(df[sort]):
        top = df.nlargest(need, sort) if descending else df.nsmallest(need, sort)
    else:
        top = df.sort_values(sort, ascending=not descending, kind="stable")
    return top.iloc[page * size: (page + 1) * size], n_pages


def fraction_histogram(run_id: str, column: str = "frac", bins: int = HIST_BINS) -> pd.DataFrame:
    """Per layer, counts of neurons by pruned fraction: columns layer, lo, hi, count (bins × layers rows)."""
    df = neurons(run_id)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for layer, values in df.groupby("layer")[column]:
        counts, _ = np.histogram(values.to_numpy(), bins=edges)
        rows += [{"layer": int(layer), "lo": edges[i], "hi": edges[i + 1], "count": int(c)}
                 for i, c in enumerate(counts)]
    return pd.DataFrame(rows, columns=["layer", "lo", "hi", "count"])


def neuron_detail(run_id: str, layer: int, index: int) -> dict:
    """Everything the neuron page shows: its row, mask pattern per weight, NSA label/shift and top examples."""
    table = neurons(run_id)
    row = table[(table["layer"] == layer) & (table["index"] == index)]
    if row.empty:
        raise NSAError(f"run {run_id} has no neuron {index} in layer {layer} "
                       f"(layers 0-{int(table['layer'].max())}, "
                       f"{int((table['layer'] == table['layer'].min()).sum())} neurons per layer)")
    return {"row": row.iloc[0].to_dict(), "masks": neuron_masks(run_id, layer, index),
            "label": _nsa_row(run_id, "nsa/neuron_labels.jsonl", layer, index),
            "shift": _nsa_row(run_id, "nsa/neuron_shift.jsonl", layer, index),
            "examples": top_examples(run_id, layer, index)}


def _nsa_row(run_id: str, rel: str, layer: int, index: int) -> dict | None:
    df = read_table(run_id, rel, required=False)
    if df is None or df.empty:
        return None
    hit = df[(df["layer"] == layer) & (df["index"] == index)]
    return None if hit.empty else hit.iloc[0].to_dict()


def neuron_masks(run_id: str, layer: int, index: int) -> dict[str, np.ndarray]:
    """The neuron's mask entries per weight: its output row in gate/up (fc1), its input column in down (fc2)."""

    path = _artifact(run_id, "masks.safetensors")
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
        sites = [s for s in mlp_sites_from_names(names) if s.layer == layer]
        if not sites:
            return {}
        site, out = sites[0], {}
        for p in site.in_params:
            sl = f.get_slice(p)
            vec = (sl[:, index:index + 1] if site.conv1d else sl[index:index + 1, :]).flatten()
            out[p] = vec.numpy().astype(np.uint8)
        sl = f.get_slice(site.out_param)
        vec = (sl[index:index + 1, :] if site.conv1d else sl[:, index:index + 1]).flatten()
        out[site.out_param] = vec.numpy().astype(np.uint8)
    return out


@functools.lru_cache(maxsize=8)
def _examples_index(stamp: tuple) -> dict[tuple[int, int], list[dict]]:
    index: dict[tuple[int, int], list[dict]] = {}
    with open(stamp[0], encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                index.setdefault((int(r["layer"]), int(r["index"])), []).append(r)
    for rows in index.values():
        rows.sort(key=lambda r: r.get("rank", 0))
    return index


def top_examples(run_id: str, layer: int, index: int) -> list[dict]:
    """Top-activating examples of a labelled neuron (token strings + dense activations, and pruned activations
    when the NSA tables carry them)."""
    path = _artifact(run_id, "nsa/top_examples.jsonl", required=False)
    if path is None:
        return []
    try:
        return _examples_index(_stamp(path)).get((layer, index), [])
    except (ValueError, KeyError) as err:
        raise ArtifactError(run_id, "nsa/top_examples.jsonl", f"is corrupt ({err})") from None


# --- semantics ---------------------------------------------------------------------------------------------
def nsa_summary(run_id: str) -> dict:
    return read_json(run_id, "nsa/summary.json")


def words(run_id: str) -> pd.DataFrame:
    return read_table(run_id, "nsa/words.jsonl")


def clusters(run_id: str) -> pd.DataFrame:
    df = read_table(run_id, "nsa/clusters.jsonl", required=False)
    return df if df is not None else pd.DataFrame(columns=["level", "name", "cluster", "activation_lost"])


def damage(run_id: str, share: float) -> DamageReport | None:
    """`nsa.damage` on the run's activation shifts (None when NSA ran without masks or labelled nothing)."""
    shift = read_table(run_id, "nsa/neuron_shift.jsonl", required=False)
    if shift is None or shift.empty:
        return None
    listed = words(run_id)
    classes = dict(zip(listed["word"], listed["cluster"]))
    return damaged_words(shift, DamageConfig(share=share), classes)


DAMAGE_HELP = {
    "n_damaged": "labelled neurons among the most damaged whose label names this word (or cluster)",
    "n_labelled": "all labelled neurons whose label names it",
    "enrichment": "its share among the damaged ÷ its share among all labelled neurons (>1: over-represented)",
    "p_value": "one-sided hypergeometric test: as many or more among the damaged by chance",
    "q_value": "Benjamini-Hochberg over the words tested (those labelling at least 5 neurons)",
}


CLUSTER_HELP = {
    "level": "cluster: a class's words together; word: one influential word",
    "n_neurons": "labelled neurons of the cluster (each once); for a word, the labelled neurons it is significant for",
    "occurrences": "times the word(s) occur in the example texts",
    "dense_activation": "summed mean activation of those neurons on the word(s), dense model",
    "activation_lost": "dense − pruned of that sum",
    "relative_lost": "activation_lost / summed |dense activation|",
}


def neuron_word_matrix(run_id: str, top: int = 25) -> pd.DataFrame:
    """Top labelled neurons (by selectivity) × their significant words, valued by selectivity (σ above the
    neuron's mean over all text tokens); NaN where the word is not one of the neuron's significant words."""
    labels = read_table(run_id, "nsa/neuron_labels.jsonl")
    if labels.empty:
        return pd.DataFrame()
    sel = labels.sort_values("top_selectivity" if "top_selectivity" in labels else "selectivity",
                             ascending=False, key=lambda s: s.map(_scalar)).head(top)
    cells: dict[str, dict[str, float]] = {}
    for r in sel.itertuples(index=False):
        name = f"L{r.layer}/{r.index}"
        ws = list(r.words) if isinstance(r.words, (list, np.ndarray)) else []
        vals = getattr(r, "selectivity", None)
        vals = list(vals) if isinstance(vals, (list, np.ndarray)) and len(vals) == len(ws) else [np.nan] * len(ws)
        cells[name] = {w: float(v) for w, v in zip(ws, vals)}
    return pd.DataFrame(cells).T


def _scalar(v: Any) -> float:
    if isinstance(v, (list, np.ndarray)):
        return float(max(v)) if len(v) else 0.0
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


VALIDATION_COLUMNS = ["cluster", "n_neurons", "n_examples", "draws", "labelled_margin_drop", "random_margin_drop_mean",
                      "random_margin_drop_std", "p_margin", "labelled_drop", "random_drop_mean", "random_drop_std",
                      "p_accuracy", "validated", "verdict"]


def validation(run_id: str) -> pd.DataFrame:
    """Per cluster: the gold-margin drop (nats, the primary measure) and the accuracy drop (points) when its top
    labelled neurons are ablated, beside random neuron sets (mean ± sd over the draws), the permutation
    p-values, `validated` (p_margin < 0.05) and the verdict sentence NSA wrote. Empty for runs without it."""
    summary = nsa_summary(run_id)
    detail = (summary.get("validation_detail") or {}).get("clusters") or {}
    rows = []
    for cluster, v in (summary.get("validation") or {}).items():
        if isinstance(v, dict):
            rows.append({col: v.get(col) for col in VALIDATION_COLUMNS if col not in ("cluster", "verdict")}
                        | {"cluster": cluster, "verdict": (detail.get(cluster) or {}).get("verdict", "")})
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


VALIDATION_HELP = {
    "labelled_margin_drop": "gold margin lost (nats) when the cluster's top labelled neurons are zeroed: "
                            "log p(gold) − max log p(other), averaged over the cluster's class",
    "random_margin_drop_mean": "the same for random neuron sets with the same per-layer counts (mean over draws)",
    "p_margin": "one-sided permutation p-value: (1 + draws losing at least as much) / (1 + draws)",
    "labelled_drop": "accuracy drop in points on the same examples (secondary: accuracy saturates)",
    "validated": "p_margin < 0.05",
}


# --- restore (the validation's mirror image: pruned neurons put back, `nsa.restore`) -------------------------
RESTORE_COLUMNS = ["examples", "n", "dense_accuracy", "pruned_accuracy", "restored_accuracy", "lost_points",
                   "recovered_points", "recovered_fraction", "random_recovered_mean", "random_recovered_std",
                   "p_accuracy", "margin_lost", "margin_recovered", "margin_recovered_fraction",
                   "random_margin_recovered_mean", "random_margin_recovered_std", "p_margin"]


def restore_table(result: dict) -> pd.DataFrame:
    """One row per example set of a restore result (all examples; the cluster's class): accuracy in %, points
    lost and recovered, the recovered fraction (None when nothing was lost), random mean ± sd, p-values; margins
    in nats."""
    return pd.DataFrame([{c: s.get(c) for c in RESTORE_COLUMNS} for s in result["scopes"].values()],
                        columns=RESTORE_COLUMNS)


RESTORE_HELP = {
    "lost_points": "dense − pruned accuracy (points) on these examples, from the run's records",
    "recovered_points": "restored − pruned accuracy (points): what putting the neurons back recovers",
    "recovered_fraction": "recovered / lost (empty when pruning lost nothing)",
    "random_recovered_mean": "the same for random pruned neurons of the same layers (mean over the draws)",
    "p_accuracy": "one-sided permutation p-value: (1 + draws recovering at least as much) / (1 + draws)",
    "margin_recovered": "gold margin (log p(gold) − max log p(other), nats) recovered, mean over the examples",
}


def ablation_and_restore(val: pd.DataFrame, result: dict) -> tuple[str, str]:
    """The two sentences of the side-by-side view: what removing a cluster's neurons from the dense model costs
    (the run's validation) and what putting its pruned neurons back into the pruned model recovers (`result`)."""
    sel = result["selection"]
    cluster, n = sel.get("cluster"), sel["n_neurons"]
    row = val[val["cluster"] == cluster] if cluster is not None else val.iloc[0:0]
    if cluster is None:
        ablation = "ablation: the run's validation ablates clusters, not hand-picked neurons."
    elif row.empty or row.iloc[0]["labelled_drop"] is None or pd.isna(row.iloc[0]["labelled_drop"]):
        ablation = f"ablation: the run's validation has no ablation of {cluster!r}."
    else:
        r = row.iloc[0]
        ablation = (f"ablation: removing the {int(r['n_neurons'])} top {cluster!r} neurons from the dense model costs "
                    f"{r['labelled_drop']:.2f} accuracy points (random {r['random_drop_mean']:.2f} ± "
                    f"{r['random_drop_std']:.2f}, p = {r['p_accuracy']:.3g}) and {r['labelled_margin_drop']:.3g} "
                    f"nats of gold margin (random {r['random_margin_drop_mean']:.2g} ± "
                    f"{r['random_margin_drop_std']:.2g}, p = {r['p_margin']:.3g}) on {int(r['n_examples'])} examples"
                    + (f", {int(r['draws'])} random draws." if pd.notna(r.get("draws")) else "."))
    s = result["scopes"]["all"]
    what = f"the {n} pruned {cluster!r} neurons" if cluster else f"the {n} chosen neurons"
    skipped = len(sel.get("never_pruned") or [])
    left = f" ({skipped} of the top neurons were never pruned)" if skipped else ""
    if s["lost_points"] > 0:
        gain = (f"recovers {s['recovered_points']:.2f} of the {s['lost_points']:.2f} points pruning lost "
                f"({100 * s['recovered_fraction']:.0f}%)")
    else:
        gain = f"changes accuracy by {s['recovered_points']:+.2f} points (pruning lost nothing here)"
    restore = (f"restore: putting {what}{left} back into the pruned model {gain}; random pruned neurons "
               f"{s['random_recovered_mean']:+.2f} ± {s['random_recovered_std']:.2f} (p = {s['p_accuracy']:.3g}); "
               f"gold margin {s['margin_recovered']:+.3g} nats vs {s['random_margin_recovered_mean']:+.2g} ± "
               f"{s['random_margin_recovered_std']:.2g} (p = {s['p_margin']:.3g}); n = {s['n']} examples, "
               f"{result['draws']} draws.")
    return ablation, restore


# --- accuracy ----------------------------------------------------------------------------------------------
GROUP_ORDER = ["sentiment", "inference", "qa", "lm", "custom"]


def accuracy(run_id: str) -> pd.DataFrame:
    """Dense and pruned accuracy per task with 95% intervals: task, group, model, acc, lo, hi, n; sentiment
    tasks first."""
    rows = []
    for which in ("dense", "pruned"):
        summary = read_json(run_id, f"eval/{which}/summary.json")
        for name, e in (summary.get("tasks") or {}).items():
            metric = "acc" if e.get("acc") is not None else next(
                (k for k in ("acc_norm", "perplexity", "word_perplexity") if e.get(k) is not None), None)
            if metric is None:
                continue
            ci = e.get(f"{metric}_ci95") or [None, None]
            rows.append({"task": name, "group": e.get("group", "custom"), "model": which, "metric": metric,
                         "value": e.get(metric), "lo": ci[0], "hi": ci[1], "n": e.get("n")})
    df = pd.DataFrame(rows, columns=["task", "group", "model", "metric", "value", "lo", "hi", "n"])
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    df["_g"] = df["group"].map(lambda g: order.get(g, len(order)))
    return df.sort_values(["_g", "task", "model"], ignore_index=True).drop(columns="_g")


def accuracy_table(run_id: str) -> pd.DataFrame:
    """One row per task: dense and pruned accuracy with their 95% intervals, the drop in points with its
    paired 95% interval, McNemar's p and the flip counts (from eval/comparison.json); sentiment first."""
    acc = accuracy(run_id)
    comparison = (eval_comparison(run_id) or {}).get("tasks") or {}
    rows = []
    for (group, task), part in acc.groupby(["group", "task"], sort=False):
        row: dict[str, Any] = {"group": group, "task": task}
        for r in part.itertuples(index=False):
            row[r.model] = r.value
            row[f"{r.model} 95% CI"] = _interval(r.lo, r.hi)
            row["n"] = r.n
        c = comparison.get(task) or {}
        if c.get("drop") is not None:
            lo, hi = c.get("drop_ci95") or (None, None)
            row["drop (points)"] = 100 * c["drop"]
            row["drop 95% CI"] = _interval(None if lo is None else 100 * lo, None if hi is None else 100 * hi)
            row["McNemar p"] = c.get("mcnemar_p")
            row["lost"], row["gained"] = c.get("n_lost"), c.get("n_gained")
        chance = dense_vs_chance(run_id, task)
        if chance is not None:
            row["chance"] = chance["chance"]
            row["dense above chance"] = "yes" if chance["above_chance"] else f"NO (p = {chance['p_value']:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


ACCURACY_HELP = {
    "n": "examples the accuracies and the drop rest on (the same examples dense and pruned)",
    "drop (points)": "dense − pruned accuracy on the same examples, in points",
    "drop 95% CI": "paired normal 95% interval of the drop",
    "McNemar p": "exact McNemar test of the lost vs gained examples",
    "chance": "share of the commonest gold answer: what always giving it scores",
    "dense above chance": "one-sided exact binomial test of the dense accuracy against chance",
}


def dense_vs_chance(run_id: str, task: str) -> dict | None:
    """`nsa.validation.above_chance` of the dense records (None for perplexity tasks)."""
    records = read_table(run_id, f"eval/dense/{task}.jsonl", required=False)
    if records is None or records.empty or "correct" not in records or "gold" not in records:
        return None
    return above_chance(records[["correct", "gold"]].to_dict("records"))


def _interval(lo: Any, hi: Any) -> str:
    return "" if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) else f"[{lo:.3f}, {hi:.3f}]"


def eval_flips(run_id: str, task: str) -> pd.DataFrame:
    """Examples of `task` whose correctness changed from dense to pruned, from the per-example evaluation
    records: index, direction (lost = dense right, pruned wrong; gained = the reverse), gold and both
    predictions, and the prompt text the model saw."""
    dense = read_table(run_id, f"eval/dense/{task}.jsonl", required=False)
    pruned = read_table(run_id, f"eval/pruned/{task}.jsonl", required=False)
    cols = ["index", "direction", "gold", "dense_prediction", "pruned_prediction", "text"]
    if dense is None or pruned is None or "correct" not in dense or "correct" not in pruned:
        return pd.DataFrame(columns=cols)
    both = dense[["index", "gold", "prediction", "correct"]].merge(
        pruned[["index", "prediction", "correct"]], on="index", suffixes=("_dense", "_pruned"))
    changed = both[both["correct_dense"] != both["correct_pruned"]].copy()
    if changed.empty:
        return pd.DataFrame(columns=cols)
    changed["direction"] = np.where(changed["correct_dense"], "lost", "gained")
    limit = (read_json(run_id, "spec.json", required=False) or {}).get("evaluate", {}).get("limit")
    try:
        spec = get_task(task)
        rows = {int(e["index"]): e for e in load_examples(spec, limit)}
        changed["text"] = [prompt_for(spec, rows[int(i)]) if int(i) in rows else "" for i in changed["index"]]
    except NSAError:
        changed["text"] = ""  # the data is not reachable here: show the records without their text
    changed = changed.rename(columns={"prediction_dense": "dense_prediction",
                                      "prediction_pruned": "pruned_prediction"})
    return changed[cols].reset_index(drop=True)


def flips(run_id: str) -> pd.DataFrame:
    """NSA's flipped examples (from the evaluation's records of its task); an empty table when none flipped."""
    df = read_table(run_id, "nsa/flips.jsonl", required=False)
    columns = ["index", "direction", "text", "words", "neurons"]
    return df if df is not None and "direction" in df else pd.DataFrame(columns=columns)


def eval_comparison(run_id: str) -> dict | None:
    return read_json(run_id, "eval/comparison.json", required=False)


# --- comparing runs ----------------------------------------------------------------------------------------
def model_of(run_id: str) -> str:
    """What a run pruned, for grouping runs (the model's name)."""
    model = str(spec(run_id).get("model", "?"))
    return "demo" if model == "demo" else Path(model).name


def compare_accuracy(run_ids: list[str]) -> pd.DataFrame:
    """One row per run and task: the run's own dense accuracy, its pruned accuracy, the drop in points with the
    paired 95% interval and the number of examples (all from the run's eval/comparison.json)."""
    rows = []
    for rid in run_ids:
        tasks = (eval_comparison(rid) or {}).get("tasks") or {}
        groups = dict(zip(*[accuracy(rid)[c] for c in ("task", "group")]))
        for task, c in tasks.items():
            if c.get("drop") is None:
                continue
            lo, hi = c.get("drop_ci95") or (c["drop"], c["drop"])
            rows.append({"model": model_of(rid), "run": run_label(rid), "run_id": rid, "task": task,
                         "group": groups.get(task, ""), "dense": c["dense_acc"], "pruned": c["pruned_acc"],
                         "drop": 100 * c["drop"], "drop_lo": 100 * lo, "drop_hi": 100 * hi, "n": c["n"]})
    return pd.DataFrame(rows, columns=["model", "run", "run_id", "task", "group", "dense", "pruned", "drop",
                                       "drop_lo", "drop_hi", "n"])


def loss_vs_drop(run_ids: list[str]) -> tuple[pd.DataFrame, dict]:
    """Per run and cluster: the cluster's relative activation loss after pruning beside the run's accuracy drop
    on the NSA task (from the evaluation's comparison, the one source of accuracy figures), and per cluster their
    correlation across the runs (`nsa.validation`; None under 3 runs). Runs without NSA-with-masks tables are
    left out."""
    rows = []
    for rid in run_ids:
        summary = read_json(rid, "nsa/summary.json", required=False) or {}
        task = summary.get("task")
        comparison = ((eval_comparison(rid) or {}).get("tasks") or {}).get(task) or {}
        table = read_table(rid, "nsa/clusters.jsonl", required=False)
        if comparison.get("drop") is None or table is None or table.empty:
            continue
        for r in table[table["level"] == "cluster"].itertuples(index=False):
            if r.relative_lost is None or pd.isna(r.relative_lost):
                continue  # a cluster with no labelled neuron has nothing to lose
            rows.append({"model": model_of(rid), "run": run_label(rid), "task": task, "cluster": r.name,
                         "relative_lost": r.relative_lost, "accuracy_drop": 100 * comparison["drop"],
                         "n": comparison.get("n")})
    df = pd.DataFrame(rows, columns=["model", "run", "task", "cluster", "relative_lost", "accuracy_drop", "n"])
    return df, loss_accuracy_correlation(df.to_dict("records"))


def neuron_differences(run_a: str, run_b: str, top: int = 50) -> pd.DataFrame:
    """Neurons whose NSA label or activation shift differ most between two runs (labelled in either)."""
    cols = ["layer", "index", "label", "shift_abs", "frac"]
    a = neurons(run_a)[cols]
    b = neurons(run_b)[cols]
    both = a.merge(b, on=["layer", "index"], suffixes=("_a", "_b"))
    both = both[(both["label_a"] != "") | (both["label_b"] != "")].copy()
    both["label_differs"] = both["label_a"] != both["label_b"]
    both["shift_diff"] = (both["shift_abs_a"].fillna(0) - both["shift_abs_b"].fillna(0)).abs()
    both["frac_diff"] = (both["frac_a"] - both["frac_b"]).abs()
    return both.sort_values(["label_differs", "shift_diff", "frac_diff"], ascending=False).head(top)
