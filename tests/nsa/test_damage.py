"""`nsa.damage`: which words label the neurons pruning damaged most; the test statistic checked by hand."""
from __future__ import annotations

from math import comb

import numpy as np
import pytest

from nsa.damage import DamageConfig, _hypergeom_upper, damaged_words, run_damage
from nsa.errors import NSAError
from nsa.jobs.runs import run_artifact


def _records(n: int = 100, planted: int = 10, seed: int = 0) -> list[dict]:
    """`n` labelled neurons: the first `planted` are labelled "bad" and lose almost all their activation; the rest
    are labelled "good" or "film" at random and lose a random share below theirs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i < planted:
            words, cluster, rel = ["bad"], "negative", -0.95 - 0.01 * rng.random()
        else:
            words, cluster = (["good", "film"], "positive") if rng.random() < 0.5 else (["film"], "mixed")
            rel = -0.9 * rng.random()
        out.append({"layer": i % 3, "index": i, "words": words, "cluster": cluster, "shift_rel": rel})
    return out


def test_planted_damage_is_found_and_nothing_else():
    report = damaged_words(_records(), DamageConfig(share=0.1))
    assert (report.n_labelled, report.n_damaged) == (100, 10) and report.damage_cutoff >= 0.95
    top = report.words.iloc[0]
    assert top["word"] == "bad" and top["n_damaged"] == 10 and top["n_labelled"] == 10
    assert top["enrichment"] == pytest.approx(10.0) and top["q_value"] < 1e-10
    others = report.words.set_index("word").loc[["good", "film"]]
    assert (others["n_damaged"] == 0).all() and (others["q_value"] > 0.05).all()
    clusters = report.clusters.set_index("cluster")
    assert clusters.loc["negative", "share_damaged"] == 1.0 and clusters.loc["negative", "p_value"] < 1e-10
    assert "bad (negative, ×10.0)" in report.sentence()
    assert report.words.set_index("word").loc["film", "cluster"] == "mixed"  # most of its labels' cluster
    listed = damaged_words(_records(), DamageConfig(share=0.1), {"film": "positive"})  # the word list's class wins
    assert listed.words.set_index("word").loc["film", "cluster"] == "positive"


def test_no_enriched_word_is_said_plainly():
    rng = np.random.default_rng(1)
    recs = [{"layer": 0, "index": i, "words": ["film"], "cluster": "mixed", "shift_rel": -rng.random()}
            for i in range(50)]
    report = damaged_words(recs)
    assert report.n_damaged == 5 and report.words["q_value"].iloc[0] == pytest.approx(1.0)
    assert report.sentence().endswith("no label word is over-represented among them (q < 0.05).")


def test_ties_fall_by_layer_then_index():
    recs = [{"layer": layer, "index": i, "words": [f"w{layer}{i}"], "cluster": "c", "shift_rel": -0.5}
            for layer in (1, 0) for i in (3, 2)]
    report = damaged_words(recs, DamageConfig(share=0.25))
    assert report.words.loc[report.words["n_damaged"] == 1, "word"].tolist() == ["w02"]


def test_rare_words_are_listed_but_not_tested():
    report = damaged_words(_records(planted=3), DamageConfig(share=0.1, min_neurons=5))
    bad = report.words.set_index("word").loc["bad"]
    assert bad["n_labelled"] == 3 and np.isnan(bad["p_value"]) and np.isnan(bad["q_value"])


def test_hypergeometric_tail_matches_counting():
    n, marked, k = 30, 7, 9
    for hits in range(0, 8):
        exact = sum(comb(marked, x) * comb(n - marked, k - x) for x in range(hits, min(marked, k) + 1)) / comb(n, k)
        assert _hypergeom_upper(np.array([hits]), n, np.array([marked]), k)[0] == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("config, message", [
    (dict(share=0.0), "share 0.0: the fraction of labelled neurons"),
    (dict(share=1.0), "between 0 and 1"),
    (dict(min_neurons=0), "min_neurons 0: must be a positive integer"),
])
def test_bad_config(config, message):
    with pytest.raises(NSAError, match=message):
        DamageConfig(**config)


def test_no_shift_records_is_a_clear_error():
    with pytest.raises(NSAError, match="no labelled neuron has an activation shift"):
        damaged_words([])


def test_fixture_run_reads_its_own_shift_table(run_ids):
    """On a run made by the real pipeline (stories260K, Wanda 50%): every labelled neuron with a shift is counted
    once, and the damaged set is the most damaged share of them."""
    import json

    rid = run_ids[0]
    shifts = [json.loads(line) for line in run_artifact(rid, "nsa/neuron_shift.jsonl").read_text().splitlines()]
    report = run_damage(rid, DamageConfig(share=0.2))
    assert report.n_labelled == len(shifts) and report.n_damaged == round(0.2 * len(shifts))
    damage = sorted((-s["shift_rel"] for s in shifts), reverse=True)
    assert report.damage_cutoff == pytest.approx(damage[report.n_damaged - 1])
    assert report.clusters["n_damaged"].sum() == report.n_damaged
