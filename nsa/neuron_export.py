"""Every neuron of a run in one table: search by word and export (JSONL close to Neuronpedia's feature exports, or
CSV). Layout in docs/neurons.md.

Reads the run's verified artifacts (`neurons.parquet`, `nsa/*`), the cached label quality when it was computed
(`nsa.label_quality`), and, given the model, each neuron's output tokens (`nsa.logit_lens`). A run without NSA
exports its masks' data and output tokens with empty explanations (`NSA_MISSING` says so): what pruning did to a
neuron and what it writes need no labels.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from nsa import datasets as D
from nsa import label_quality as LQ
from nsa import matching as M
from nsa.artifacts import Entry, read_json, read_jsonl
from nsa.atomic import atomic_path
from nsa.attribution import DENSE_FORMAT
from nsa.errors import NSAError
from nsa.jobs.runs import run_artifact
from nsa.logit_lens import all_top_tokens
from nsa.neurons import removed
from nsa.paths import cache_dir
from nsa.words import WORD_RE, words_of

SUFFIXES = (".jsonl", ".csv")
NSA_MISSING = ("run {run} has no NSA tables: the export holds every neuron's pruned fractions and output tokens "
               "with empty labels, words, scores and examples (add NSA to the run to fill them)")
CSV_COLUMNS = ["layer", "index", "label", "cluster", "words", "top_selectivity", "detection_auc", "detection_auc_lo",
               "detection_auc_hi", "pruned_detection_auc", "pos_str", "neg_str", "pruned_pos_str", "pruned_neg_str",
               "frac_in", "frac_out", "frac", "removed", "n_examples"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a CSV cell starting so is run by spreadsheets: quoted with '


def neutralise(value):
    """A CSV cell that a spreadsheet would run as a formula, prefixed with ' (numbers and other text untouched):
    the one rule for every CSV this project writes (the export here and the app's table downloads)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


# --- the run's neuron table --------------------------------------------------------------------------------
def neuron_table(run_id: str) -> pd.DataFrame:
    """One row per MLP neuron: layer, index, frac_in, frac_out, frac, removed (a structured run removed its whole
    row or column)."""
    return fraction_columns(pd.read_parquet(run_artifact(run_id, "neurons.parquet")))


def fraction_columns(base: pd.DataFrame) -> pd.DataFrame:
    """layer, index, frac_in, frac_out of a neurons.parquet table, with frac (their mean) and removed (derived
    again, so runs made before the column existed read the same): what the app's table and the export share."""
    df = base[["layer", "index", "frac_in", "frac_out"]].copy()
    df["frac"] = (df["frac_in"] + df["frac_out"]) / 2
    df["removed"] = removed(df["frac_in"], df["frac_out"])
    return df


def has_nsa(run_id: str) -> bool:
    return run_artifact(run_id, "nsa/neuron_labels.jsonl", required=False) is not None


def _jsonl(run_id: str, rel: str) -> list[dict]:
    path = run_artifact(run_id, rel, required=False)
    return read_jsonl(path) if path is not None else []


# --- search by word ----------------------------------------------------------------------------------------
SEARCH_COLUMNS = ["layer", "index", "word", "selectivity", "q_value", "mean_activation", "label", "cluster", "frac",
                  "removed"]


def check_word(word: str) -> str:
    w = (word or "").strip().lower()
    if not w or not WORD_RE.fullmatch(w):
        raise NSAError(f"search for one word (letters or digits, e.g. terrible), not {str(word)[:40]!r}")
    return w


def word_neurons(run_id: str, word: str) -> pd.DataFrame:
    """Neurons for which `word` is significant in the run's NSA matching (every layer and cluster), most selective
    first, with their label and pruned fraction. From the NSA dense statistics (the shared `nsa-dense` entry) when
    cached, else from the labels (their top words only). `NSAError` with a sentence when the word is not one of
    the run's influential words (saying whether it occurs in the examples at all) or the run has no NSA."""
    w = check_word(word)
    if not has_nsa(run_id):
        raise NSAError(f"run {run_id} has no NSA tables: no neuron is matched to words (add NSA to the run)")
    summary = read_json(run_artifact(run_id, "nsa/summary.json"))
    words = [r["word"] for r in _jsonl(run_id, "nsa/words.jsonl")]
    if w not in words:
        raise NSAError(_not_a_word(run_id, w, summary, words))
    rows = _from_state(summary, words, w) if _state_entry(summary).complete() else _from_labels(run_id, w)
    df = pd.DataFrame(rows, columns=["layer", "index", "word", "selectivity", "q_value", "mean_activation"])
    table = neuron_table(run_id).merge(_label_table(run_id), on=["layer", "index"], how="left")
    df = df.merge(table[["layer", "index", "label", "cluster", "frac", "removed"]], on=["layer", "index"], how="left")
    df[["label", "cluster"]] = df[["label", "cluster"]].fillna("")
    return df.sort_values("selectivity", ascending=False, ignore_index=True)[SEARCH_COLUMNS]


def _not_a_word(run_id: str, word: str, summary: dict, words: list[str]) -> str:
    task = D.get_task(summary["task"])
    texts = [D.example_text(task, ex) for ex in D.load_examples(task, limit=summary.get("limit"))]
    n = sum(word in set(words_of(t)) for t in texts)
    if n == 0:
        return (f"'{word}' occurs in none of the {len(texts)} {task.name} examples NSA read for run {run_id}, so no "
                f"neuron can be matched to it; the run's influential words are: {', '.join(words[:20])}")
    return (f"'{word}' occurs in {n} of the {len(texts)} {task.name} examples but is not one of the run's "
            f"{len(words)} influential words, which are the only words NSA matches to neurons; re-run NSA with a word "
            f"file that includes it (Semantics page)")


def _state_entry(summary: dict) -> Entry:
    return Entry(cache_dir() / "nsa-dense" / str(summary.get("dense_cache")), "nsa-dense", DENSE_FORMAT)


def _from_state(summary: dict, words: list[str], word: str) -> list[dict]:
    state = load_file(str(_state_entry(summary).path("state.safetensors")))
    keys = {f for f in M.MatchConfig.__dataclass_fields__}
    config = M.MatchConfig(**{k: v for k, v in (summary.get("matching") or {}).items() if k in keys})
    matching = M.label_neurons(state, words, ["?"] * len(words), config)
    k, rows = words.index(word), []
    for layer, (stats, q, sig) in enumerate(zip(matching.stats, matching.q, matching.significant)):
        for n in M.torch_nonzero(sig[k]):
            rows.append({"layer": layer, "index": n, "word": word, "selectivity": float(stats.selectivity[k, n]),
                         "q_value": float(q[k, n]), "mean_activation": float(stats.mean[k, n])})
    return rows


def _from_labels(run_id: str, word: str) -> list[dict]:
    rows = []
    for lab in _jsonl(run_id, "nsa/neuron_labels.jsonl"):
        if word in (lab.get("words") or []):
            j = lab["words"].index(word)
            rows.append({"layer": lab["layer"], "index": lab["index"], "word": word,
                         "selectivity": lab["selectivity"][j], "q_value": lab["q_value"][j],
                         "mean_activation": lab["mean_activation"][j]})
    return rows


def _label_table(run_id: str) -> pd.DataFrame:
    labels = _jsonl(run_id, "nsa/neuron_labels.jsonl")
    return pd.DataFrame([{"layer": r["layer"], "index": r["index"], "label": r["label"], "cluster": r["cluster"]}
                         for r in labels], columns=["layer", "index", "label", "cluster"])


def filter_found(df: pd.DataFrame, min_frac: float = 0.0, removed: bool | None = None,
                 min_auc: float | None = None, quality: pd.DataFrame | None = None) -> pd.DataFrame:
    """Search results filtered by pruned fraction, removed (True/False/None = either) and detection AUC (neurons
    without a computed AUC are dropped when `min_auc` is given)."""
    out = df[df["frac"] >= min_frac]
    if removed is not None:
        out = out[out["removed"] == removed]
    if quality is not None:
        out = out.merge(quality[["layer", "index", "auc"]], on=["layer", "index"], how="left")
    if min_auc is not None:
        out = out[out["auc"].fillna(-1) >= min_auc] if "auc" in out else out.iloc[0:0]
    return out.reset_index(drop=True)


# --- export ------------------------------------------------------------------------------------------------
def check_export_path(path: str | Path) -> Path:
    """The export file's path: `.jsonl` or `.csv`, in an existing folder (checked before any work)."""
    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise NSAError(f"--export {p.name}: unknown format {p.suffix or '(no suffix)'!r}; give a .jsonl (Neuronpedia-"
                       "style records) or .csv (one flat row per neuron) file name")
    if not p.parent.is_dir():
        raise NSAError(f"--export {p}: folder {p.parent} does not exist")
    if p.is_dir():
        raise NSAError(f"--export {p} is a folder: give a file name")
    return p


def export_records(run_id: str, model=None, tokenizer=None, masks: dict | None = None, weights: dict | None = None,
                   k: int = 5, progress: Callable | None = None) -> list[dict]:
    """One record per MLP neuron (docs/neurons.md); output tokens only when `model` is given."""
    spec = read_json(run_artifact(run_id, "spec.json"))
    table = neuron_table(run_id)
    labels = {(r["layer"], r["index"]): r for r in _jsonl(run_id, "nsa/neuron_labels.jsonl")}
    examples: dict[tuple[int, int], list[dict]] = {}
    for r in _jsonl(run_id, "nsa/top_examples.jsonl"):
        examples.setdefault((r["layer"], r["index"]), []).append(r)
    quality = LQ.stored(run_id) if labels else None
    scores = {(r.layer, r.index): r for r in quality.itertuples(index=False)} if quality is not None else {}
    tokens = all_top_tokens(model, tokenizer, masks, weights, k, progress=progress) if model is not None else {}
    out = []
    for r in table.itertuples(index=False):
        key = (int(r.layer), int(r.index))
        rec = {"modelId": Path(str(spec.get("model"))).name, "runId": run_id, "layer": key[0], "index": key[1],
               "source": f"{key[0]}-mlp", "frac_in": float(r.frac_in), "frac_out": float(r.frac_out),
               "frac": float(r.frac), "removed": bool(r.removed), "explanations": []}
        if key in labels:
            rec["explanations"].append(_explanation(labels[key], scores.get(key)))
        rec |= _logit_fields(tokens.get(key))
        rec["activations"] = [_activation(e) for e in sorted(examples.get(key, []), key=lambda e: e.get("rank", 0))]
        out.append(rec)
    return out


def _nan_to_none(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def _explanation(lab: dict, score) -> dict:
    scores = {"selectivity": lab.get("selectivity"), "q_value": lab.get("q_value"),
              "top_selectivity": lab.get("top_selectivity"), "mean_activation": lab.get("mean_activation")}
    if score is not None:
        scores |= {"detection_auc": _nan_to_none(score.auc),
                   "detection_auc_ci95": [_nan_to_none(score.auc_lo), _nan_to_none(score.auc_hi)],
                   "pruned_detection_auc": _nan_to_none(score.pruned_auc)}
    return {"description": lab["label"], "typeName": "nsa-words", "explanationModelName": "nsa",
            "cluster": lab.get("cluster"), "words": lab.get("words"), "scores": scores}


def _logit_fields(tok: dict | None) -> dict:
    out = {}
    for prefix, part in (("", "dense"), ("pruned_", "pruned")):
        ranked = (tok or {}).get(part) or {}
        out |= {f"{prefix}pos_str": ranked.get("promoted", []), f"{prefix}pos_values": ranked.get("promoted_logits", []),
                f"{prefix}neg_str": ranked.get("suppressed", []),
                f"{prefix}neg_values": ranked.get("suppressed_logits", [])}
    return out


def _activation(e: dict) -> dict:
    values = e.get("activations") or []
    return {"tokens": e.get("tokens") or [], "values": values, "pruned_values": e.get("pruned_activations"),
            "maxValue": e.get("max_activation"), "maxValueTokenIndex": int(np.argmax(values)) if values else None,
            "dataIndex": e.get("example"), "text": e.get("text")}


def csv_rows(records: list[dict]) -> list[dict]:
    """The flat CSV layout (CSV_COLUMNS): lists joined with " | ", examples counted, not included."""
    rows = []
    for rec in records:
        ex = (rec["explanations"] or [{}])[0]
        s = ex.get("scores") or {}
        ci = s.get("detection_auc_ci95") or [None, None]
        rows.append({"layer": rec["layer"], "index": rec["index"], "label": ex.get("description", ""),
                     "cluster": ex.get("cluster", ""), "words": " | ".join(ex.get("words") or []),
                     "top_selectivity": s.get("top_selectivity"), "detection_auc": s.get("detection_auc"),
                     "detection_auc_lo": ci[0], "detection_auc_hi": ci[1],
                     "pruned_detection_auc": s.get("pruned_detection_auc"),
                     **{k: " | ".join(rec[k]) for k in ("pos_str", "neg_str", "pruned_pos_str", "pruned_neg_str")},
                     "frac_in": rec["frac_in"], "frac_out": rec["frac_out"], "frac": rec["frac"],
                     "removed": rec["removed"], "n_examples": len(rec["activations"])})
    return rows


def export_text(records: list[dict], suffix: str) -> str:
    """The records as JSONL or as CSV text (a text cell starting like a spreadsheet formula gets a leading ', the
    starts `nsa_app.ui.safe_csv` quotes in the app's other downloads)."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in csv_rows(records):
        writer.writerow({k: neutralise(v) for k, v in row.items()})
    return buf.getvalue()


def write_export(records: list[dict], path: str | Path) -> Path:
    p = check_export_path(path)
    with atomic_path(p) as tmp:
        Path(tmp).write_text(export_text(records, p.suffix.lower()), encoding="utf-8")
    return p
