"""How well a neuron's NSA label describes it on text NSA never saw: a detection score.

Method (one sentence, shown on the page): on held-out examples of the run's NSA task (the `n_holdout` examples
after the first `limit` that NSA labelled from), the ROC AUC of the neuron's maximum activation over the
example's own text tokens for telling examples that contain at least one of its label words from those that
contain none, with a seeded bootstrap 95% interval over examples.

AUC = P(max activation on a random example with a label word > on one without), ties counting one half (the
Mann-Whitney statistic); 0.5 = the label says nothing, 1 = the label's words always light the neuron up most.
The interval is the 2.5th and 97.5th percentile over `n_boot` resamples of the held-out examples (the same
resamples for every neuron: one seed). Undefined (None) when the held-out examples all contain, or all lack, the
label words. Computed for the dense model (whose activations picked the label) and the pruned one.

Batched: one forward pass per batch of held-out prompts reads every labelled neuron at once (a hook per layer
keeps only the labelled columns, the maximum over text tokens), dense then with the masks applied. Cached as a
shared entry of kind `label-quality`, keyed by the run, the sha256 of its labels and masks and the settings.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from nsa import datasets as D
from nsa import matching as M
from nsa.artifacts import Entry, read_jsonl
from nsa.errors import NSAError
from nsa.jobs.runs import artifact_sha, run_artifact
from nsa.masks import masks_applied
from nsa.neuron_examples import RunInputs, task_spec, up_to_layer
from nsa.neurons import capture, neuron_sites
from nsa.words import words_of
from pruners import ProgressEvent

FORMAT = 1
METHOD = ("ROC AUC of the neuron's max activation over an example's text for telling held-out examples of the "
          "task that contain one of its label words from those that contain none (the {n} examples after the "
          "first {limit} NSA labelled from; 95% interval: {boot} seeded bootstrap resamples of the examples)")
COLUMNS = ["layer", "index", "n_present", "n_absent", "auc", "auc_lo", "auc_hi", "pruned_auc", "pruned_auc_lo",
           "pruned_auc_hi"]


@dataclass(frozen=True)
class QualitySettings:
    n_holdout: int = 200
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 16


def auc_with_interval(scores: np.ndarray, present: np.ndarray, n_boot: int, seed: int) -> tuple:
    """(AUC, lo, hi) of `scores` [n] separating present (True) from absent; None x3 when one group is empty.
    Each bootstrap resample reweights examples by how often it drew them; ties count one half."""
    present = np.asarray(present, dtype=bool)
    if present.all() or not present.any():
        return None, None, None
    values = _weighted_auc(np.asarray(scores, dtype=float), present, _weights(len(scores), n_boot, seed))
    point, rest = values[0], values[1:]
    rest = rest[np.isfinite(rest)]
    lo, hi = (np.percentile(rest, [2.5, 97.5]) if rest.size else (np.nan, np.nan))
    return float(point), float(lo), float(hi)


@functools.lru_cache(maxsize=4)
def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[1 + n_boot, n]: all ones (the point estimate), then how often each bootstrap resample drew each example."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.bincount((draws + n * np.arange(n_boot)[:, None]).ravel(), minlength=n * n_boot).reshape(n_boot, n)
    out = np.vstack([np.ones((1, n)), counts]).astype(float)
    out.setflags(write=False)
    return out


def _weighted_auc(x: np.ndarray, present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC under each row of example weights [B, n]: Σ_pos w_i (negative weight below x_i + half the tied)."""
    order = np.argsort(x, kind="stable")
    xs, pos, w = x[order], present[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(xs) != 0])  # tie groups
    group = np.cumsum(np.r_[True, np.diff(xs) != 0]) - 1
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)  # [B, G]
    below = np.cumsum(neg_w, axis=1) - neg_w
    per_item = (below + 0.5 * neg_w)[:, group]  # [B, n]
    w_pos, w_neg = (w * pos).sum(1), (w * ~pos).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((w * pos) * per_item).sum(1) / (w_pos * w_neg)


def holdout(run: RunInputs, tokenizer, model, n: int) -> tuple[list[M.Encoded], list[set[str]], int]:
    """(encoded held-out prompts, the words of each example's text, NSA's limit): the task's examples after the
    first `limit`. `NSAError` when there are none (NSA read every example of the task)."""
    task = task_spec(run.spec, tokenizer)
    if task is None:
        raise NSAError(f"run {run.run_id} has no NSA labels to score (it did not ask for NSA)")
    limit = run.spec["nsa"].get("limit")
    rows = D.load_examples(task, limit=None if limit is None else limit + n)
    held = rows[limit:] if limit is not None else []
    if not held:
        raise NSAError(f"run {run.run_id}: NSA labelled from every example of {task.name} ({len(rows)}), so none is "
                       "left to score its labels on; run NSA with a smaller limit")
    encoded = M.encode(task, held, tokenizer, [], M.context_length(model, tokenizer, None))
    words = [set(words_of(D.example_text(task, ex))) for ex in held]
    return encoded, words, limit


def max_activations(model, encoded: list[M.Encoded], neurons: dict[int, list[int]], batch_size: int,
                    progress: Callable[[int], None] | None = None) -> dict[int, np.ndarray]:
    """{layer: [n_examples, len(neurons[layer])]} maximum activation over each example's text tokens."""
    sites = neuron_sites(model)
    device = next(model.parameters()).device
    cols = {layer: torch.tensor(idx, device=device) for layer, idx in neurons.items()}
    last = max(neurons)
    out = {layer: [] for layer in neurons}
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        ids, att = M.padded(batch, device)
        mask = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for b, e in enumerate(batch):
            mask[b, e.text_positions] = True

        def read(pos: int, acts) -> None:
            if pos in cols:
                picked = acts[..., cols[pos]].float().masked_fill(~mask[..., None], -np.inf)
                out[pos].append(picked.amax(dim=1).cpu().numpy())

        with torch.no_grad(), capture(sites[:last + 1], read):
            model.base_model(input_ids=ids, attention_mask=att, use_cache=False)
        if progress is not None:
            progress(len(batch))
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def compute(model, tokenizer, run: RunInputs, labels: list[dict], settings: QualitySettings = QualitySettings(),
            progress: Callable | None = None) -> pd.DataFrame:
    """One row per labelled neuron (COLUMNS): dense and pruned detection AUC with bootstrap intervals."""
    if not labels:
        return pd.DataFrame(columns=COLUMNS)
    encoded, words, _limit = holdout(run, tokenizer, model, settings.n_holdout)
    neurons: dict[int, list[int]] = {}
    for lab in labels:
        neurons.setdefault(int(lab["layer"]), []).append(int(lab["index"]))
    total, done = 2 * len(encoded), [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(ProgressEvent(done[0] / total, f"{done[0]}/{total} held-out prompts (dense, then pruned)",
                                   "label quality"))

    dense = max_activations(model, encoded, neurons, settings.batch_size, step)
    with masks_applied(model, run.masks, run.weights, only=up_to_layer(max(neurons))):
        pruned = max_activations(model, encoded, neurons, settings.batch_size, step)
    column = {(layer, n): k for layer, idx in neurons.items() for k, n in enumerate(idx)}
    rows = []
    for lab in labels:
        layer, index = int(lab["layer"]), int(lab["index"])
        label_words = set(lab.get("words") or [])
        present = np.array([bool(label_words & ws) for ws in words])
        k = column[layer, index]
        auc = auc_with_interval(dense[layer][:, k], present, settings.n_boot, settings.seed)
        p_auc = auc_with_interval(pruned[layer][:, k], present, settings.n_boot, settings.seed)
        rows.append([layer, index, int(present.sum()), int((~present).sum()), *auc, *p_auc])
    return pd.DataFrame(rows, columns=COLUMNS)


def method_sentence(run: RunInputs, settings: QualitySettings = QualitySettings()) -> str:
    return METHOD.format(n=settings.n_holdout, limit=(run.spec.get("nsa") or {}).get("limit"), boot=settings.n_boot)


def _labels(run_id: str) -> list[dict]:
    path = run_artifact(run_id, "nsa/neuron_labels.jsonl", required=False)
    if path is None:
        raise NSAError(f"run {run_id} has no NSA labels to score (it did not ask for NSA)")
    return read_jsonl(path)


def entry(run_id: str, settings: QualitySettings = QualitySettings()) -> Entry:
    """The cache entry of a run's label quality (kind `label-quality`)."""
    return Entry.keyed("label-quality", FORMAT, {
        "run": run_id, "labels": artifact_sha(run_id, "nsa/neuron_labels.jsonl"),
        "masks": artifact_sha(run_id, "masks.safetensors"), "settings": asdict(settings) | {"batch_size": None}})


def stored(run_id: str, settings: QualitySettings = QualitySettings()) -> pd.DataFrame | None:
    """The cached scores, or None when not computed (or the run has no NSA labels)."""
    if run_artifact(run_id, "nsa/neuron_labels.jsonl", required=False) is None:
        return None
    e = entry(run_id, settings)
    return pd.read_parquet(e.path("quality.parquet")) if e.complete() else None


def quality(model, tokenizer, run: RunInputs, settings: QualitySettings = QualitySettings(),
            progress: Callable | None = None) -> pd.DataFrame:
    """The run's label quality from the cache, computed once for every labelled neuron when missing."""
    labels = _labels(run.run_id)
    e = entry(run.run_id, settings)

    def fill(tmp: Path) -> None:
        compute(model, tokenizer, run, labels, settings, progress).to_parquet(tmp / "quality.parquet", index=False)

    e.ensure(fill)
    return pd.read_parquet(e.path("quality.parquet"))
