"""Validation helpers: random controls match the labelled neurons' layers; correlations match scipy."""
from __future__ import annotations

import pytest

from nsa.errors import NSAError
from nsa.validation import (
    above_chance,
    binomial_tail,
    cluster_neurons,
    loss_accuracy_correlation,
    permutation_p,
    random_like,
)


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
    import scipy.stats as stats
    xs = [0.1, 0.4, 0.35, 0.8, 0.6]
    ys = [1.0, 3.0, 2.0, 9.0, 9.0]
    points = [{"cluster": "neg", "relative_lost": x, "accuracy_drop": y} for x, y in zip(xs, ys)]
    points += [{"cluster": "pos", "relative_lost": 0.5, "accuracy_drop": 1.0}] * 2
    out = loss_accuracy_correlation(points)
    assert out["neg"]["n"] == 5
    assert out["neg"]["pearson"] == pytest.approx(stats.pearsonr(xs, ys)[0])
    assert out["neg"]["spearman"] == pytest.approx(stats.spearmanr(xs, ys)[0])
    assert out["pos"] == {"n": 2, "pearson": None, "spearman": None}


def test_permutation_p_value():
    """One-sided Monte Carlo p: (1 + #null >= observed) / (1 + draws); 20 draws all below gives 1/21."""
    assert permutation_p(1.0, [0.0] * 20) == pytest.approx(1 / 21)
    assert permutation_p(1.0, [2.0] * 20) == 1.0
    assert permutation_p(0.5, [0.1] * 10 + [0.9] * 10) == pytest.approx(11 / 21)


def test_binomial_tail_and_the_chance_check():
    import scipy.stats as stats

    for k, n, p in ((60, 100, 0.5), (0, 10, 0.3), (10, 10, 0.9), (530, 1000, 0.505)):
        assert binomial_tail(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9)
    records = [{"correct": i < 55, "gold": i % 2} for i in range(100)]
    check = above_chance(records)
    assert check["chance"] == 0.5 and check["accuracy"] == 0.55 and not check["above_chance"]
    records = [{"correct": i < 80, "gold": i % 2} for i in range(100)]
    assert above_chance(records)["above_chance"]
