"""`python -m nsa neurons`: bad input is one sentence and exit 2 within seconds; export and search on fixture runs."""
from __future__ import annotations

import csv
import json
import time

import pytest

from nsa.cli import main
from nsa.jobs.pipeline import run_job


@pytest.mark.parametrize("args, message", [
    (["0123456789abcdef", "--word", "film"], "run folder does not exist"),
    (["not-a-run", "--word", "film"], "not a run id"),
    (["{run}", "--export", "out.txt"], "unknown format '.txt'; give a .jsonl"),
    (["{run}", "--layer", "0", "--neuron", "172"], "neuron 172 is outside layer 0: it has 172 MLP neurons"),
    (["{run}", "--layer", "9", "--neuron", "0"], "layer 9 is outside the model"),
    (["{run}", "--word", "xyzzy"], "'xyzzy' occurs in none of the 24 sst2 examples NSA read"),
    (["{run}", "--word", "two words"], "search for one word"),
    (["{run}"], "say what to show"),
])
def test_bad_input(args, message, run_ids, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.process_time()
    rc = main(["neurons", *[a.format(run=run_ids[0]) for a in args]])
    assert rc == 2 and message in capsys.readouterr().err
    assert time.process_time() - start < 10


def test_export_jsonl_csv_and_search(run_ids, capsys, tmp_path):
    rid = run_ids[0]
    assert main(["neurons", rid, "--export", str(tmp_path / "n.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert len(records) == 5 * 172 and {"layer", "index", "explanations", "pos_str", "pruned_neg_str", "activations",
                                         "frac", "removed"} <= set(records[0])
    labelled = [r for r in records if r["explanations"]]
    assert labelled and all(len(r["pos_str"]) == 5 for r in records)
    assert any(r["activations"] and r["activations"][0]["pruned_values"] for r in labelled)
    assert main(["neurons", rid, "--export", str(tmp_path / "n.csv"), "--no-output-tokens"]) == 0
    rows = list(csv.DictReader((tmp_path / "n.csv").open()))
    assert len(rows) == 5 * 172 and sum(bool(r["label"]) for r in rows) == len(labelled)
    word = labelled[0]["explanations"][0]["words"][0]
    capsys.readouterr()
    assert main(["neurons", rid, "--word", word]) == 0
    assert f"respond to '{word}'" in capsys.readouterr().out


def test_export_without_nsa_says_so(stories_dir, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("NSA_CACHE_DIR", str(tmp_path / "cache"))  # its own cache: the shared fixture runs stay two
    rid = run_job({"model": str(stories_dir), "prune": {"method": "magnitude", "sparsity": 0.5}}).name
    assert main(["neurons", rid, "--export", str(tmp_path / "n.csv"), "--no-output-tokens"]) == 0
    err = capsys.readouterr().err
    assert "has no NSA tables" in err and len((tmp_path / "n.csv").read_text().splitlines()) == 5 * 172 + 1
    assert main(["neurons", rid, "--word", "film"]) == 2 and "has no NSA tables" in capsys.readouterr().err


def test_damaged_words(run_ids, capsys):
    assert main(["neurons", run_ids[0], "--damaged", "--share", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "most damaged of" in out and "enrichment" in out and "q_value" in out
    assert main(["neurons", run_ids[0], "--damaged", "--share", "1.5"]) == 2
    assert "share 1.5: the fraction of labelled neurons called most damaged" in capsys.readouterr().err
