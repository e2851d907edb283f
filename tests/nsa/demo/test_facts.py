"""Task demo-facts: a committed, deterministic multiple-choice set of facts the demo training text states,
which the committed model answers above chance (the demo's non-sentiment task, docs/demo.md)."""
from __future__ import annotations

import json

from nsa.demo import corpus as C
from nsa.demo.build import BuildConfig, write_data
from nsa.evaluation import evaluate
from nsa.models import load_model
from nsa.paths import DEMO_DATA_DIR

FACTS = DEMO_DATA_DIR / "facts_test.jsonl"


def _committed() -> list[dict]:
    return [json.loads(line) for line in FACTS.read_text().splitlines()]


def test_committed_file_is_what_the_build_writes(tmp_path):
    rows = _committed()
    assert 200 <= len(rows) <= 400
    assert rows == C.facts_test(BuildConfig().seed) == C.facts_test(BuildConfig().seed)
    assert C.facts_test(1) != rows
    hashes = write_data(tmp_path, BuildConfig())  # the build's code path, byte for byte
    assert (tmp_path / "facts_test.jsonl").read_bytes() == FACTS.read_bytes()
    for name, digest in hashes.items():
        assert (DEMO_DATA_DIR / f"{name}.jsonl").read_bytes() == (tmp_path / f"{name}.jsonl").read_bytes(), name
    info = json.loads((DEMO_DATA_DIR.parent / "model" / "build_info.json").read_text())
    assert info["data_sha256"] == hashes


def test_rows_are_well_formed_and_balanced():
    rows = _committed()
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["answer"] < 4
    counts = [sum(r["answer"] == i for r in rows) for i in range(4)]
    assert min(counts) > len(rows) / 8, counts
    assert {r["category"] for r in rows} == {"colour", "animal", "sum", "month", "capital"}


def test_every_gold_answer_is_stated_in_training_text():
    cfg = BuildConfig()
    data = C.demo_data(cfg.seed, negation=cfg.test_negation)
    docs = C.training_documents(cfg.seed, cfg.n_docs, {r["text"] for r in data.reviews_test},
                                cfg.prompted_share, cfg.bare_share, cfg.negation)
    text = "\n".join(docs)
    for r in _committed():
        stated = f"{r['question']} {r['choices'][r['answer']]}"
        assert stated in text, f"not in training text: {stated!r}"
        for i, wrong in enumerate(r["choices"]):  # no distractor is also true
            if i != r["answer"]:
                assert f"{r['question']} {wrong}." not in text and f"{r['question']} {wrong}\n" not in text


def test_committed_model_above_chance(tmp_path):
    """Dense accuracy through the harness: 0.558 (chance 0.25); the test keeps >= 0.45."""
    model, tok = load_model("demo")
    summary = evaluate(model, tok, ["demo-facts"], out_dir=tmp_path)
    acc = summary["tasks"]["demo-facts"]["acc"]
    assert acc >= 0.45, f"demo-facts accuracy {acc:.3f}"
