"""Step 1, model-based: gradient x input of the gold-label margin, checked against the evaluator and calculus."""
from __future__ import annotations

import pytest
import torch

from nsa import datasets as D
from nsa.evaluation import run_evaluation
from nsa.words import WordConfig, example_attribution, select_words


def test_margin_is_the_evaluators_loglik_margin(stories):
    model, tok = stories
    rows = D.load_examples("sst2", limit=6)
    _summary, records = run_evaluation(model, tok, "sst2", limit=6, batch_size=6)
    for row, rec in zip(rows, records["sst2"]):
        _attr, margin, _prompt, _offsets = example_attribution(model, tok, D.get_task("sst2"), row)
        gold = rec["gold"]
        assert margin == pytest.approx(rec["loglik"][gold] - rec["loglik"][1 - gold], abs=2e-3)


def test_attribution_is_the_first_order_effect_of_scaling_a_token(stories):
    """d margin / d s at s = 1, when token t's embedding is scaled by s, equals grad . embedding."""
    model, tok = stories
    spec = D.get_task("sst2")
    row = D.load_examples("sst2", limit=1)[0]
    attr, margin, _p, _o = example_attribution(model, tok, spec, row)
    t = max(range(len(attr) - 12), key=lambda i: abs(attr[i]))
    eps = 1e-2
    up = example_attribution(model, tok, spec, row, scale={t: 1 + eps})[1]
    down = example_attribution(model, tok, spec, row, scale={t: 1 - eps})[1]
    assert (up - down) / (2 * eps) == pytest.approx(attr[t], rel=0.05, abs=1e-3)


def test_gradient_words_per_class(stories):
    model, tok = stories
    rows = D.load_examples("sst2", limit=40)
    events = []
    sel = select_words("sst2", rows, "gradient", WordConfig(top_k=4, min_df=2), model, tok, events.append)
    assert sel.method == "gradient" and set(r["cluster"] for r in sel.rows) <= {"negative", "positive"}
    assert all(r["score"] > 0 and r["frequency"] >= 2 for r in sel.rows)
    assert len({r["word"] for r in sel.rows}) == len(sel.rows) <= 8
    assert len(events) == 40 and events[-1].fraction == 1.0
    with pytest.raises(Exception, match="needs the dense model"):
        select_words("sst2", rows, "gradient")
    torch.set_num_threads(1)
