"""nsa.label_quality: the weighted AUC is the Mann-Whitney AUC, the bootstrap interval is seeded and brackets it;
on a fixture run one batched pass scores every label, cached as a `label-quality` entry."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from nsa import label_quality as LQ
from nsa.neuron_examples import run_inputs


def test_auc_matches_sklearn_with_ties_and_seeded_interval():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 80).astype(float)  # many ties
    present = rng.random(80) < 0.3
    auc, lo, hi = LQ.auc_with_interval(scores, present, 300, seed=1)
    assert auc == roc_auc_score(present, scores)
    assert lo <= auc <= hi and (lo, hi) == LQ.auc_with_interval(scores, present, 300, seed=1)[1:]
    assert LQ.auc_with_interval(scores, np.ones(80, bool), 300, 1) == (None, None, None)


def test_quality_on_a_fixture_run(stories, run_ids):
    model, tok = stories
    run = run_inputs(run_ids[0])
    settings = LQ.QualitySettings(n_holdout=60, n_boot=200)
    assert LQ.stored(run.run_id, settings) is None
    q = LQ.quality(model, tok, run, settings)
    labels = LQ._labels(run.run_id)
    assert len(q) == len(labels) and set(q.columns) == set(LQ.COLUMNS)
    assert (q["n_present"] + q["n_absent"] == 60).all()
    ok = q.dropna(subset=["auc"])
    assert ((ok["auc_lo"] <= ok["auc"]) & (ok["auc"] <= ok["auc_hi"])).all()
    # one neuron by hand: its max activation over held-out text tokens, label word presence, sklearn's AUC
    encoded, words, _ = LQ.holdout(run, tok, model, 60)
    lab = next(lab for lab, r in zip(labels, q.itertuples()) if not np.isnan(r.auc))
    acts = LQ.max_activations(model, encoded, {lab["layer"]: [lab["index"]]}, 16)[lab["layer"]][:, 0]
    present = np.array([bool(set(lab["words"]) & ws) for ws in words])
    row = q[(q["layer"] == lab["layer"]) & (q["index"] == lab["index"])].iloc[0]
    assert row["auc"] == roc_auc_score(present, acts)
    assert LQ.stored(run.run_id, settings).equals(q)
