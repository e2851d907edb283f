"""The findings' statistics on constructed tables (tests of the estimators, not of any model)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from nsa.study.findings import calibration_effect, group_effect, t_interval


def _table(calib_gap: float, sentiment_gap: float, tasks=(("demo-reviews", "sentiment"), ("rte", "inference"))):
    rng = np.random.default_rng(0)
    rows = []
    for method, source, sparsity, seed in itertools.product(["wanda", "magnitude"], ["generic", "reviews"],
                                                             [0.4, 0.6], [0, 1, 2]):
        run = f"{method}-{source}-{sparsity}-{seed}"
        for task, group in tasks:
            drop = 0.1 + (calib_gap if source == "generic" and method == "wanda" else 0.0) \
                + (sentiment_gap if group == "sentiment" else 0.0) + rng.normal(0, 0.005)
            rows.append({"run_id": run, "model": "demo", "method": method, "pattern": "unstructured",
                         "sparsity": sparsity, "source": source, "nsamples": 8, "seqlen": 64, "seed": seed,
                         "task": task, "group": group, "drop": drop})
    return pd.DataFrame(rows)


def test_calibration_effect_finds_the_gap_only_where_it_is():
    effect = calibration_effect(_table(calib_gap=0.2, sentiment_gap=0.0)).set_index("method")
    assert effect.loc["wanda", "mean_diff"] == pytest.approx(0.2, abs=0.01)
    assert effect.loc["wanda", "ci_low"] > 0.15
    assert effect.loc["magnitude", "ci_low"] < 0 < effect.loc["magnitude", "ci_high"]
    assert (effect["n_cells"] == 2 * 3 * 2).all()  # sparsities x seeds x tasks matched pairwise
    # the verdict speaks in percentage points: a gap of 0.2 in accuracy is about +20 points, not +0.2
    assert "the drop differs by +20." in effect.loc["wanda", "verdict"] and "interval [+19." in effect.loc["wanda", "verdict"]
    assert effect.loc["wanda", "verdict"].endswith("the calibration set matters here")


def test_group_effect_is_paired_per_run():
    effect = group_effect(_table(calib_gap=0.3, sentiment_gap=0.1)).set_index("method")
    assert effect.loc["wanda", "mean_diff"] == pytest.approx(0.1, abs=0.01)  # calibration gap cancels per run
    assert effect.loc["magnitude", "ci_low"] > 0.08
    assert (effect["n_runs"] == 2 * 2 * 3).all()
    assert effect.loc["wanda", "other_groups"] == "inference"


def test_missing_contrasts_say_why():
    only_sentiment = _table(0.0, 0.0, tasks=(("demo-reviews", "sentiment"),))
    frame = group_effect(only_sentiment)
    assert frame.empty and "only sentiment tasks" in frame.attrs["note"]
    one_source = only_sentiment[only_sentiment["source"] == "generic"]
    frame = calibration_effect(one_source)
    assert frame.empty and "fewer than two calibration sources" in frame.attrs["note"]


def test_t_interval():
    lo, hi = t_interval(np.array([1.0, 2.0, 3.0]))
    assert lo == pytest.approx(2 - 4.302653 * 1 / np.sqrt(3), rel=1e-5) and hi == pytest.approx(4 - lo)
    assert np.isnan(t_interval(np.array([1.0]))[0])


def test_owl_runs_are_their_own_method_in_every_finding():
    """A sparsity-profile axis: OWL and uniform Wanda runs differ only in `profile`; the findings keep them apart
    ("wanda · owl") instead of averaging them into one method."""
    table = _table(calib_gap=0.0, sentiment_gap=0.1)
    wanda = table[table["method"] == "wanda"]
    owl = wanda.assign(profile="owl", run_id=wanda["run_id"] + "-owl",
                       drop=wanda["drop"] + np.where(wanda["group"] == "sentiment", 0.2, 0.0))
    both = pd.concat([table.assign(profile="uniform"), owl], ignore_index=True)
    effect = group_effect(both).set_index("method")
    assert set(effect.index) == {"wanda", "wanda · owl", "magnitude"}
    assert effect.loc["wanda", "mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert effect.loc["wanda · owl", "mean_diff"] == pytest.approx(0.3, abs=0.01)
    assert (effect["n_runs"] == 2 * 2 * 3).all()  # never pooled
    assert set(calibration_effect(both)["method"]) == {"wanda", "wanda · owl", "magnitude"}


def test_group_effect_can_leave_out_tasks_the_dense_model_does_not_do():
    """A task at or below chance in the dense model "drops" by noise (here −50 points, as BoolQ on SmolLM2):
    `competent_only` compares sentiment with the other tasks the dense model does."""
    tasks = (("demo-reviews", "sentiment"), ("rte", "inference"), ("boolq", "inference"))
    table = _table(calib_gap=0.0, sentiment_gap=0.1, tasks=tasks)
    table["dense_above_chance"] = table["task"] != "boolq"
    table.loc[table["task"] == "boolq", "drop"] = -0.5
    everything = group_effect(table).set_index("method")
    competent = group_effect(table, competent_only=True).set_index("method")
    assert everything.loc["wanda", "mean_diff"] > 0.3  # boolq's "gain" inflates the gap
    assert competent.loc["wanda", "mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert competent.loc["wanda", "n_runs"] == 12  # 2 sources x 2 sparsities x 3 seeds
    none = group_effect(table.assign(dense_above_chance=False), competent_only=True)
    assert none.empty and none.attrs["note"] == "the dense model does no task above chance"


def test_one_run_gives_its_difference_without_an_interval():
    one = _table(calib_gap=0.0, sentiment_gap=0.1)
    one = one[one["run_id"] == one["run_id"].iloc[0]]
    verdict = group_effect(one)["verdict"].iloc[0]
    assert verdict.startswith("wanda: sentiment tasks compared with inference: the drop differs by +10.")
    assert verdict.endswith("points over 1 run, too few for an interval")
