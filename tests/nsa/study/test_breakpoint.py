"""The sharp-dropping-point estimator on synthetic piecewise-linear curves with noise (a test of the estimator)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nsa.errors import NSAError
from nsa.study.breakpoint import fit_breakpoint, fit_over_seeds, seed_interval, table_breakpoints

SPARSITY = np.round(np.arange(0.3, 0.81, 0.05), 2)


def _curve(t: float, rng, noise: float = 0.01, s=SPARSITY) -> np.ndarray:
    """Flat-ish (slope -0.1) up to t, then steep (slope -2.5): the shape 'Essential Sparsity' reports."""
    s = np.asarray(s)
    clean = 0.95 - 0.1 * (s - 0.3) - 2.5 * np.maximum(0.0, s - t)
    return clean + rng.normal(0.0, noise, s.shape)


@pytest.mark.parametrize("t", [0.45, 0.55, 0.62, 0.7])
def test_recovers_known_breakpoint_under_noise(t):
    rng = np.random.default_rng(int(t * 100))
    fit = fit_breakpoint(SPARSITY, _curve(t, rng))
    assert fit.breakpoint == pytest.approx(t, abs=0.025)
    assert fit.slope_left == pytest.approx(-0.1, abs=0.25)
    assert fit.slope_right == pytest.approx(-2.6, abs=0.4)
    assert fit.slope_change < -1.5
    assert fit.sse < fit.sse_line / 10  # the bend explains most of what a straight line misses
    assert np.abs(fit.predict(SPARSITY) - _curve(t, np.random.default_rng(0), noise=0.0)).max() < 0.05


def test_seed_interval_covers_truth_and_narrows_with_less_noise():
    rng = np.random.default_rng(7)
    noisy = fit_over_seeds({seed: (SPARSITY, _curve(0.6, rng, 0.03)) for seed in range(5)})
    quiet = fit_over_seeds({seed: (SPARSITY, _curve(0.6, rng, 0.002)) for seed in range(5)})
    for result in (noisy, quiet):
        assert result.ci95[0] <= 0.6 <= result.ci95[1]
        assert result.breakpoint == pytest.approx(0.6, abs=0.03)
        assert len(result.per_seed) == 5
    assert quiet.ci95[1] - quiet.ci95[0] < noisy.ci95[1] - noisy.ci95[0]


def test_single_seed_has_no_interval_and_repeated_sparsities_are_fine():
    rng = np.random.default_rng(3)
    s = np.repeat(SPARSITY, 2)
    assert fit_breakpoint(s, _curve(0.5, rng, s=s)).breakpoint == pytest.approx(0.5, abs=0.03)
    assert fit_over_seeds({0: (SPARSITY, _curve(0.5, rng))}).ci95 is None
    assert seed_interval([0.5]) is None


def test_too_few_sparsities_is_a_clear_error():
    with pytest.raises(NSAError, match="at least 4 distinct sparsities, got 3"):
        fit_breakpoint([0.3, 0.5, 0.7], [0.9, 0.8, 0.2])
    with pytest.raises(NSAError, match="differ in length"):
        fit_breakpoint([0.3, 0.5], [0.9])


def test_table_breakpoints_one_per_curve_with_seed_interval():
    rng = np.random.default_rng(11)
    rows = []
    for method, t in (("wanda", 0.65), ("magnitude", 0.45)):
        for seed in range(3):
            for s, acc in zip(SPARSITY, _curve(t, rng, 0.01)):
                rows.append({"run_id": f"{method}{seed}{s}", "model": "demo", "method": method,
                             "pattern": "unstructured", "sparsity": s, "source": "demo-generic", "nsamples": 8,
                             "seqlen": 64, "seed": seed, "task": "demo-reviews", "group": "sentiment",
                             "accuracy": acc})
    table = pd.DataFrame(rows)
    bps = table_breakpoints(table).set_index("method")
    assert set(bps.index) == {"wanda", "magnitude"}
    assert bps.loc["wanda", "breakpoint"] == pytest.approx(0.65, abs=0.03)
    assert bps.loc["magnitude", "breakpoint"] == pytest.approx(0.45, abs=0.03)
    assert (bps["n_seeds"] == 3).all()
    assert (bps["ci_low"] <= bps["breakpoint"] + 0.03).all() and (bps["breakpoint"] - 0.03 <= bps["ci_high"]).all()
    # a curve with too few sparsities is skipped, not an error
    assert table_breakpoints(table[table["sparsity"] <= 0.4]).empty
