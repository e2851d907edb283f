"""The demo corpus: deterministic, held-out words really held out, prompts exactly the evaluator's."""
from __future__ import annotations

import re

from nsa.datasets.spec import SENTIMENT_PROMPT
from nsa.demo import corpus as C
from nsa.demo import lexicon as L
from nsa.demo.build import BuildConfig


def test_corpus_is_deterministic_by_seed():
    assert C.training_documents(3, 300) == C.training_documents(3, 300)
    assert C.training_documents(3, 300) != C.training_documents(4, 300)
    assert C.demo_data(1, 50, 20) == C.demo_data(1, 50, 20)


def test_unseen_words_never_in_training_text():
    cfg = BuildConfig()
    text = "\n".join(C.training_documents(cfg.seed, cfg.n_docs, prompted_share=cfg.prompted_share,
                                          bare_share=cfg.bare_share, negation=cfg.negation)).lower()
    for word in L.UNSEEN_NOUNS + L.UNSEEN_ASPECTS + L.UNSEEN_DESCRIPTORS:
        assert word not in text, f"held-out word {word!r} occurs in training text"
    unseen = C.demo_data(cfg.seed, negation=cfg.test_negation).unseen_test
    words = set(L.UNSEEN_NOUNS + L.UNSEEN_ASPECTS + L.UNSEEN_DESCRIPTORS)
    assert all(set(re.findall(r"[a-z]+", r["text"].lower())) & words for r in unseen)
    seen_nouns = {n for ns, asp in L.DOMAINS.values() for n in ns + asp}
    assert not any(set(re.findall(r"[a-z]+", r["text"].lower())) & seen_nouns for r in unseen)


def test_held_out_reviews_not_trained_on_and_balanced():
    cfg = BuildConfig()
    data = C.demo_data(0, negation=cfg.test_negation)
    test_texts = {r["text"] for r in data.reviews_test}
    docs = C.training_documents(0, 20_000, exclude=test_texts, negation=cfg.negation)
    trained = {d.split("\nQuestion:")[0] for d in docs}
    assert not (trained & test_texts)
    for rows in (data.reviews_test, data.unseen_test):
        assert sum(r["label"] for r in rows) == len(rows) // 2
    assert not ({r["text"] for r in data.generic_calib} & {r["text"] for r in data.reviews_calib})


def test_training_prompt_is_exactly_the_evaluators():
    doc = C.sentiment_prompt("The film was good.", 1)
    assert doc == SENTIMENT_PROMPT.format(text="The film was good.") + " positive"
    assert doc == "The film was good.\nQuestion: Is this sentence positive or negative?\nAnswer: positive"
    docs = C.training_documents(0, 2000)
    assert sum(d.endswith("\nAnswer: positive") for d in docs) > 300
    assert sum(d.endswith("\nAnswer: negative") for d in docs) > 300


def test_negation_flips_polarity_words():
    import random

    rng = random.Random(0)
    phrases = [C._adj(rng, True) for _ in range(500)]
    negated = [p for p in phrases if p.split()[0] in ("not", "never", "hardly")]
    assert negated and all(p.split()[-1] in L.NEGATIVE for p in negated)


def _negated_share(texts: list[str]) -> float:
    return sum(bool(re.search(r"\b(not|never|hardly)\b", t)) for t in texts) / len(texts)


def test_negation_share_is_a_knob_and_test_mix_is_as_configured():
    few = C.demo_data(0, 300, 10, negation=0.0).reviews_test
    many = C.demo_data(0, 300, 10, negation=0.5).reviews_test
    assert _negated_share([r["text"] for r in few]) == 0.0
    assert _negated_share([r["text"] for r in many]) > 0.45  # verb templates ("We loved ...") have none
    cfg = BuildConfig()
    docs = C.training_documents(0, 3000, negation=cfg.negation, prompted_share=cfg.prompted_share)
    reviews = [d.split("\nQuestion:")[0] for d in docs if d.endswith(("positive", "negative"))]
    test = [r["text"] for r in C.demo_data(0, negation=cfg.test_negation).reviews_test]
    # the held-out mix is the configured one (harder than training when test_negation > negation)
    assert (_negated_share(test) > _negated_share(reviews) + 0.1) == (cfg.test_negation > cfg.negation + 0.1)


def test_document_shares():
    docs = C.training_documents(0, 4000, prompted_share=0.4, bare_share=0.05)
    prompted = sum(d.endswith(("Answer: positive", "Answer: negative")) for d in docs) / len(docs)
    assert 0.35 < prompted < 0.45
    import pytest

    with pytest.raises(ValueError):
        C.training_documents(0, 10, prompted_share=0.98, bare_share=0.05)
