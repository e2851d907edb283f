"""Step 1: influential words (learned / user file) on real SST-2 rows, and its bad inputs."""
from __future__ import annotations

import json

import pytest

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.words import WordConfig, document_counts, read_word_file, select_words, word_spans, words_of


def test_word_spans_are_offsets_into_the_text():
    text = "It's NOT a well-made film , isn't it ?"
    spans = word_spans(text)
    assert [w for w, _, _ in spans] == ["it's", "not", "a", "well-made", "film", "isn't", "it"]
    for w, s, e in spans:
        assert text[s:e].lower() == w
    assert words_of("n't , 's") == ["n't", "s"]


def test_learned_words_separate_the_sst2_classes():
    rows = D.load_examples("sst2")
    sel = select_words("sst2", rows, "learned", WordConfig(top_k=15, min_df=3))
    assert sel.clusters == ["negative", "positive"]
    by = {r["word"]: r for r in sel.rows}
    assert len(by) == len(sel.rows)  # one cluster per word
    neg = {r["word"] for r in sel.rows if r["cluster"] == "negative"}
    pos = {r["word"] for r in sel.rows if r["cluster"] == "positive"}
    assert len(neg) == len(pos) == 15
    assert {"bad", "dull"} <= neg and {"best", "good"} <= pos
    df, tf = document_counts([D.example_text("sst2", r) for r in rows])
    for r in sel.rows:
        assert r["score"] > 0 and r["frequency"] == df[r["word"]] >= 3 and r["occurrences"] == tf[r["word"]]
    # a word's class agrees with where it occurs more often (label-conditional document frequency)
    for word in ("bad", "best"):
        with_word = [r["label"] for r in rows if word in words_of(r["text"])]
        majority = "positive" if sum(with_word) * 2 > len(with_word) else "negative"
        assert by[word]["cluster"] == majority
    assert sel.details["C"] in WordConfig().Cs


def test_one_class_dataset_is_refused():
    rows = [r for r in D.load_examples("sst2", limit=60) if r["label"] == 1]
    with pytest.raises(NSAError, match="at least two classes"):
        select_words("sst2", rows, "learned")


def test_user_file_json_csv_and_missing_words(tmp_path):
    rows = D.load_examples("sst2", limit=100)
    good = tmp_path / "clusters.json"
    good.write_text(json.dumps({"praise": ["good", "best"], "blame": ["bad"]}))
    sel = select_words("sst2", rows, str(good))
    assert [(r["word"], r["cluster"]) for r in sel.rows] == [("good", "praise"), ("best", "praise"), ("bad", "blame")]
    assert all(r["frequency"] >= 1 for r in sel.rows)
    csv_file = tmp_path / "words.csv"
    csv_file.write_text("word,cluster,score\nGood,pos,2\nbad,neg,\n")
    assert [(r["word"], r["cluster"], r["score"]) for r in read_word_file(csv_file)] == [
        ("good", "pos", 2.0), ("bad", "neg", 1.0)]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"odd": ["good", "zyzzyva", "qwxq"]}))
    with pytest.raises(NSAError, match=r"never occur.*zyzzyva, qwxq"):
        select_words("sst2", rows, str(missing))
    phrase = tmp_path / "phrase.json"
    phrase.write_text(json.dumps([{"word": "very good", "cluster": "x"}]))
    with pytest.raises(NSAError, match="not a single word"):
        select_words("sst2", rows, str(phrase))
    with pytest.raises(NSAError, match="does not exist"):
        select_words("sst2", rows, str(tmp_path / "nope.json"))
    with pytest.raises(NSAError, match="unknown word selection"):
        select_words("sst2", rows, "clever")
