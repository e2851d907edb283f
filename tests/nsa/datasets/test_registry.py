"""The dataset registry on the real data in ../shared/data (NSA_DATA_DIR set by tests/conftest.py)."""
from __future__ import annotations

import json

import pytest

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.paths import DEMO_DATA_DIR
from tests.conftest import ROOT

ALL_LISTED = ["sst2", "yelp_polarity", "imdb", "amazon_polarity", "sentiment140", "rte", "boolq", "arc_easy",
              "arc_challenge", "openbookqa", "piqa", "hellaswag", "winogrande", "wikitext2", "c4"]
ROWS = {"sst2": 872, "yelp_polarity": 1000, "imdb": 1000, "amazon_polarity": 1000, "sentiment140": 359,
        "rte": 277, "boolq": 3270, "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500, "piqa": 1838,
        "hellaswag": 2000, "winogrande": 1267, "wikitext2": 2891, "c4": 2000}


@pytest.mark.parametrize("name", ALL_LISTED)
def test_every_listed_task_loads_from_shared_data(name):
    rows = D.load_examples(name)
    spec = D.get_task(name)
    assert len(rows) == ROWS[name]
    assert [r["index"] for r in rows[:3]] == [0, 1, 2]
    meta = D.dataset_meta(name)
    assert meta["splits"][spec.split]["rows"] == len(rows)  # the file read is the split meta.json describes
    for row in rows[:50]:
        prompt = D.prompt_for(spec, row)
        choices = D.choices_for(spec, row)
        gold = D.gold_for(spec, row)
        assert isinstance(prompt, str) and prompt
        if spec.kind == "perplexity":
            assert choices == [] and gold is None
        else:
            assert 0 <= gold < len(choices) and all(c.startswith(" ") for c in choices)
            assert len(D.requests_for(spec, row)) == len(choices)
    if spec.kind == "classification":
        counts = meta["splits"][spec.split]["label_counts"]
        assert sum(r["label"] == 1 for r in rows) == counts["1"]


def test_sst2_prompt_is_the_harness_prompt():
    spec = D.get_task("sst2")
    row = D.load_examples("sst2", limit=1)[0]
    assert D.prompt_for(spec, row) == (
        "it 's a charming and often affecting journey .\nQuestion: Is this sentence positive or negative?\nAnswer:")
    assert D.choices_for(spec, row) == [" negative", " positive"] and D.gold_for(spec, row) == 1
    for name in ("yelp_polarity", "imdb", "amazon_polarity", "sentiment140", "demo-reviews", "demo-unseen"):
        assert D.get_task(name).prompt == spec.prompt and D.get_task(name).label_names == spec.label_names


def test_boolq_question_mark_not_doubled_and_winogrande_partial():
    boolq = D.load_examples("boolq", limit=5)
    assert all(not D.prompt_for("boolq", r).endswith("??\nAnswer:") for r in boolq)
    row = D.load_examples("winogrande", limit=1)[0]
    reqs = D.requests_for("winogrande", row)
    assert [c for c, _ in reqs] == row["contexts"] and reqs[0][1] == " " + row["continuation"]


def test_groups_and_harness_mapping():
    assert set(D.list_tasks(group="sentiment")) >= {"sst2", "yelp_polarity", "imdb", "amazon_polarity",
                                                    "sentiment140", "demo-reviews", "demo-unseen"}
    assert D.list_tasks(kind="perplexity") == ["wikitext2", "c4"]
    mapping = D.harness_task_names()
    assert mapping["sst2"] == "sst2" and mapping["arc_easy"] == "arc_easy" and mapping["boolq"] == "boolq"
    assert D.get_task("demo-reviews").synthetic and "SYNTHETIC" in D.get_task("demo-unseen").description
    info = D.task_info("sst2")
    assert info["local_splits"]["train_sample"] == 2000 and info["hf"] == "nyu-mll/glue"


def test_other_local_split_and_limit():
    rows = D.load_examples("sst2", split="train_sample", limit=7)
    assert len(rows) == 7 and "train_idx" in rows[0]
    with pytest.raises(NSAError, match="no local split 'nope'.*local splits: test, train_sample, validation"):
        D.load_examples("sst2", split="nope")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_limit_must_be_positive(limit):
    with pytest.raises(NSAError, match="limit must be a positive integer"):
        D.load_examples("sst2", limit=limit)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(NSAError) as err:
        D.get_task("sst3")
    assert "unknown dataset/task 'sst3'" in str(err.value) and "sst2" in str(err.value)
    assert "winogrande" in str(err.value)


def test_not_local_and_offline_fails_at_once_naming_options(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("NSA_DATA_DIR", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(NSAError) as err:
        D.load_examples("imdb")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "imdb/test.jsonl (missing)" in msg and "stanfordnlp/imdb" in msg and "NSA_DATA_DIR" in msg


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_custom_jsonl_and_csv(tmp_path):
    f = _write(tmp_path / "mine.jsonl", [{"review": "great", "y": 1}, {"review": "awful", "y": 0}])
    spec = D.register_custom_task(f, ["negative", "positive"], text_field="review", label_field="y")
    try:
        assert spec.name == "mine" and spec.group == "custom" and "mine" in D.list_tasks(group="custom")
        rows = D.load_examples("mine")
        assert rows[0]["text"] == "great" and rows[0]["label"] == 1
        assert D.prompt_for(spec, rows[0]) == D.SENTIMENT_PROMPT.format(text="great")
    finally:
        D.unregister_task("mine")
    csv = tmp_path / "topics.csv"
    csv.write_text('text,label\n"about sports, mostly",2\nabout cars,0\n', encoding="utf-8")
    spec = D.register_custom_task(csv, ["cars", "food", "sports"], name="topics")
    try:
        rows = D.load_examples("topics")
        assert rows[0] == {"text": "about sports, mostly", "label": 2, "index": 0}
        assert D.choices_for(spec, rows[0]) == [" cars", " food", " sports"]
        assert "Which is it: cars, food or sports?" in D.prompt_for(spec, rows[0])
    finally:
        D.unregister_task("topics")


@pytest.mark.parametrize("rows, match", [
    ([{"text": "a", "label": 1}, {"txt": "b", "label": 0}], r"line 2: missing column\(s\) text"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": "pos"}], r"line 2: label 'pos' is not an integer"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": 1}, {"text": "c", "label": 2}],
     r"line 3: label 2 is outside the label names \['negative', 'positive'\]"),
    ([], "is empty"),
])
def test_custom_file_errors_name_the_line(tmp_path, rows, match):
    f = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(NSAError, match=match):
        D.register_custom_task(f, ["negative", "positive"])
    assert "bad" not in D.list_tasks()


def test_csv_errors_count_the_header_line(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("text,label\nok,1\nnot ok,1.5\n", encoding="utf-8")
    with pytest.raises(NSAError, match=r"bad.csv, line 3: label '1.5' is not an integer"):
        D.register_custom_task(csv, ["negative", "positive"])


def test_explicit_file_for_a_registered_task_is_validated(tmp_path):
    f = _write(tmp_path / "sst2_small.jsonl", [{"text": "fine", "label": 1}, {"text": "x", "label": 5}])
    with pytest.raises(NSAError, match="line 2: label 5 is outside"):
        D.load_examples("sst2", path=f)
    empty = _write(tmp_path / "empty.jsonl", [])
    with pytest.raises(NSAError, match="dataset is empty"):
        D.load_examples("sst2", path=empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label": 0}\n{"text": \n', encoding="utf-8")
    with pytest.raises(NSAError, match="line 2: not valid JSON"):
        D.load_examples("sst2", path=broken)


def test_bad_custom_task_arguments(tmp_path):
    with pytest.raises(NSAError, match="does not exist"):
        D.register_custom_task(tmp_path / "nope.jsonl", ["a", "b"])
    f = _write(tmp_path / "x.jsonl", [{"text": "a", "label": 0}])
    with pytest.raises(NSAError, match="at least 2 distinct"):
        D.register_custom_task(f, ["a", "a"])
    with pytest.raises(NSAError, match="is a built-in task"):
        D.register_custom_task(f, ["a", "b"], name="sst2")


def test_custom_tasks_are_seen_by_other_processes(tmp_path):
    """A job worker or the app resolves a task registered elsewhere (saved under the cache dir)."""
    import subprocess
    import sys

    f = _write(tmp_path / "shared_task.jsonl", [{"text": "fine", "label": 1}, {"text": "poor", "label": 0}])
    D.register_custom_task(f, ["negative", "positive"], name="shared-task")
    try:
        code = "from nsa import datasets as D; print(len(D.load_examples('shared-task')), D.list_tasks()[-1])"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT)
        assert out.stdout.split() == ["2", "shared-task"], out.stderr
    finally:
        D.unregister_task("shared-task")
    with pytest.raises(NSAError, match="unknown dataset/task 'shared-task'"):
        D.get_task("shared-task")


@pytest.mark.parametrize("name, file", [("demo-reviews", "reviews_test.jsonl"), ("demo-unseen", "unseen_test.jsonl")])
def test_demo_tasks_read_the_committed_demo_files(name, file):
    spec = D.get_task(name)
    assert spec.path == str(DEMO_DATA_DIR / file) and spec.group == "sentiment" and spec.synthetic
    if not (DEMO_DATA_DIR / file).is_file():  # before `python -m nsa demo build` has written them
        with pytest.raises(NSAError, match="python -m nsa demo build"):
            D.load_examples(name)
        return
    rows = D.load_examples(name)
    assert rows and {r["label"] for r in rows} <= {0, 1} and all(isinstance(r["text"], str) for r in rows)
    assert D.prompt_for(spec, rows[0]).endswith("\nQuestion: Is this sentence positive or negative?\nAnswer:")
