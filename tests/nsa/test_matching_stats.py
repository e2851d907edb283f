"""Step 2 statistics without a model: running sums vs brute force, the permutation test vs Monte Carlo, BH."""
from __future__ import annotations

import math

import pytest
import torch

from nsa import matching as M


def _fake_batch(seed: int, n_words: int = 3):
    """Two layers of random activations on 4 padded prompts with text positions and word occurrences."""
    g = torch.Generator().manual_seed(seed)
    lengths = [9, 12, 7, 12]
    encoded = []
    for b, n in enumerate(lengths):
        text = list(range(1, n - 2))  # template tokens at 0 and the last two positions
        occ = [(int(torch.randint(n_words, (1,), generator=g)), t) for t in text[::2]]
        encoded.append(M.Encoded(index=10 * seed + b, ids=[0] * n, offsets=[(0, 1)] * n, prompt="x",
                                 text_positions=text, occurrences=occ))
    acts = [torch.randn(len(lengths), 12, 5, generator=g) for _ in range(2)]
    return encoded, acts


def test_running_sums_equal_brute_force():
    acc = M.Accumulator([5, 5], n_words=3, top_m=2, device="cpu")
    everything = []
    for seed in range(3):
        encoded, acts = _fake_batch(seed)
        acc.start_batch(encoded, 12, "cpu")
        for layer in range(2):
            acc(layer, acts[layer])
        everything.append((encoded, acts))
    state = acc.state()
    for layer in range(2):
        text = torch.cat([a[layer][b, e.text_positions] for enc, a in everything for b, e in enumerate(enc)])
        assert int(state["n_tokens"][0]) == text.shape[0]
        torch.testing.assert_close(state[f"s1.{layer}"], text.double().sum(0))
        torch.testing.assert_close(state[f"s2.{layer}"], (text.double() ** 2).sum(0))
        for w in range(3):
            occ = [a[layer][b, t] for enc, a in everything for b, e in enumerate(enc) for k, t in e.occurrences if k == w]
            assert int(state["word_count"][w]) == len(occ)
            torch.testing.assert_close(state[f"wsum.{layer}"][w], torch.stack(occ).double().sum(0))
        # top example maxima: the best two examples per neuron, over text tokens only
        per_example = {e.index: a[layer][b, e.text_positions].max(0).values for enc, a in everything
                       for b, e in enumerate(enc)}
        for n in range(5):
            best = sorted(per_example, key=lambda i: -float(per_example[i][n]))[:2]
            assert state[f"top_idx.{layer}"][:, n].tolist() == best


def test_permutation_z_matches_monte_carlo_permutations():
    """The analytic permutation null (finite-population mean/variance) against 20k real permutations."""
    g = torch.Generator().manual_seed(0)
    n_tok, k = 2000, 30
    # SwiGLU-like products silu(a) * b: skewed and heavier-tailed than a normal
    acts = torch.nn.functional.silu(torch.randn(n_tok, 1, generator=g)) * torch.randn(n_tok, 1, generator=g)
    positions = torch.randperm(n_tok, generator=g)[:k]
    acts[positions] += 0.25  # a word that raises the neuron a little
    state = {"n_tokens": torch.tensor([n_tok]), "word_count": torch.tensor([k]),
             "s1.0": acts.double().sum(0), "s2.0": (acts.double() ** 2).sum(0),
             "wsum.0": acts[positions].double().sum(0, keepdim=True)}
    stats = M.layer_stats(state, 0, min_occurrences=5)
    p_analytic = float(M.upper_p(stats.z)[0, 0])
    observed = float(acts[positions].mean())
    draws = torch.stack([acts[torch.randperm(n_tok, generator=g)[:k], 0].mean() for _ in range(20000)])
    p_mc = float((draws >= observed).double().mean())
    assert 0.001 < p_mc < 0.2
    assert p_analytic == pytest.approx(p_mc, abs=0.02 + 0.5 * p_mc)
    # the permutation distribution's variance is exactly sd^2/k * (N-k)/(N-1)
    sd = float(stats.sd[0])
    assert float(draws.var()) == pytest.approx(sd ** 2 / k * (n_tok - k) / (n_tok - 1), rel=0.05)
    assert float(stats.selectivity[0, 0]) == pytest.approx((observed - float(acts.mean())) / sd, rel=1e-6)


def test_benjamini_hochberg_matches_scipy():
    import scipy.stats as scipy_stats
    p = torch.rand(500, generator=torch.Generator().manual_seed(1), dtype=torch.float64) ** 3
    expected = scipy_stats.false_discovery_control(p.numpy(), method="bh")
    torch.testing.assert_close(M.benjamini_hochberg(p), torch.from_numpy(expected))


def test_labels_need_significance_occurrences_and_selectivity():
    """Word 0 drives neuron 1 strongly; word 1 is rare; word 2 is noise: only neuron 1 is labelled, by word 0."""
    g = torch.Generator().manual_seed(2)
    n_tok = 2000
    acts = torch.randn(n_tok, 4, generator=g)
    w0 = torch.arange(0, 60) * 30
    w1 = torch.tensor([7, 9, 11])
    w2 = torch.arange(0, 60) * 30 + 15
    acts[w0, 1] += 3.0
    acts[w1, 2] += 10.0  # large but only 3 occurrences: not tested
    state = {"n_tokens": torch.tensor([n_tok]), "word_count": torch.tensor([60, 3, 60]),
             "s1.0": acts.double().sum(0), "s2.0": (acts.double() ** 2).sum(0),
             "wsum.0": torch.stack([acts[w].double().sum(0) for w in (w0, w1, w2)])}
    m = M.label_neurons(state, ["awful", "rare", "the"], ["negative", "negative", "positive"],
                        M.MatchConfig(min_occurrences=5, alpha=0.05, min_selectivity=0.5))
    assert [(lab["layer"], lab["index"]) for lab in m.labels] == [(0, 1)]
    lab = m.labels[0]
    assert lab["label"] == "negative: awful" and lab["cluster"] == "negative" and lab["words"] == ["awful"]
    assert lab["q_value"][0] < 1e-10 and lab["selectivity"][0] > 2
    assert m.q[0][1].eq(1).all()  # the rare word is never tested
    assert not math.isnan(lab["neuron_std"])
