"""Validation helpers: random controls match the labelled neurons' layers; correlations match scipy."""
from __future__ import annotations

import json

import pytest

from nsa.errors import NSAError
from nsa.validation import cluster_neurons, correlation_from_runs, loss_accuracy_correlation, random_like


def test_cluster_neurons_rank_by_selectivity():
    labels = [{"layer": 0, "index": 3, "cluster": "neg", "top_selectivity": 2.0},
              {"layer": 1, "index": 4, "cluster": "neg", "top_selectivity": 5.0},
              {"layer": 1, "index": 9, "cluster": "pos", "top_selectivity": 9.0},
              {"layer": 2, "index": 1, "cluster": "mixed", "top_selectivity": 7.0}]
    assert cluster_neurons(labels, "neg", 5) == [(1, 4), (0, 3)]
    assert cluster_neurons(labels, "neg", 1) == [(1, 4)]


def test_random_controls_keep_layer_counts_and_avoid_labelled():
    chosen = [(0, 1), (0, 2), (3, 5)]
    exclude = {(0, 1), (0, 2), (0, 3), (3, 5)}
    draws = [random_like(chosen, [8, 8, 8, 8], exclude, seed) for seed in range(5)]
    for d in draws:
        assert sorted(layer for layer, _ in d) == [0, 0, 3]
        assert not set(d) & exclude and len(set(d)) == 3
    assert len({tuple(d) for d in draws}) > 1  # seeds differ
    assert random_like(chosen, [8, 8, 8, 8], exclude, 0) == draws[0]  # and are reproducible
    with pytest.raises(NSAError, match="too few"):
        random_like([(0, 1), (0, 2)], [3], {(0, 0), (0, 1)}, 0)


def test_correlations_match_scipy(tmp_path):
    stats = pytest.importorskip("scipy.stats")
    xs = [0.1, 0.4, 0.35, 0.8, 0.6]
    ys = [1.0, 3.0, 2.0, 9.0, 9.0]
    points = [{"cluster": "neg", "relative_lost": x, "accuracy_drop": y} for x, y in zip(xs, ys)]
    points += [{"cluster": "pos", "relative_lost": 0.5, "accuracy_drop": 1.0}] * 2
    out = loss_accuracy_correlation(points)
    assert out["neg"]["n"] == 5
    assert out["neg"]["pearson"] == pytest.approx(stats.pearsonr(xs, ys)[0])
    assert out["neg"]["spearman"] == pytest.approx(stats.spearmanr(xs, ys)[0])
    assert out["pos"] == {"n": 2, "pearson": None, "spearman": None}
    dirs = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        d = tmp_path / f"run{k}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"accuracy": {"drop": y}}))
        (d / "clusters.jsonl").write_text(json.dumps({"level": "cluster", "name": "neg", "relative_lost": x}) + "\n")
        dirs.append(d)
    assert correlation_from_runs(dirs)["neg"]["pearson"] == pytest.approx(out["neg"]["pearson"])
    (dirs[0] / "summary.json").write_text(json.dumps({"accuracy": {"dense": 0.5}}))
    with pytest.raises(NSAError, match="without masks"):
        correlation_from_runs(dirs)
