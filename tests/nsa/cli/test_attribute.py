"""`python -m nsa attribute`: argument errors before any model loads, and a full run on stories260K."""
from __future__ import annotations

import json

import pytest

from nsa.cli import main


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "2"], "--seeds: must be at least 20, got '2'"),
    (["--alpha", "1.5"], "--alpha: must be above 0 and below 1, got '1.5'"),
    (["--validation", "maybe"], "--validation: expected true or false"),
    (["--n-ablate", "0"], "--n-ablate: must be at least 1"),
    (["--words", "no/such/words.json"], "--words"),
    (["--weights", "w.safetensors"], "does not exist"),
    (["--task", "no-such-task"], "no-such-task"),
    (["--limit", "0"], "limit"),
    (["--masks", "nowhere/masks.safetensors"], "does not exist"),
])
def test_bad_arguments_fail_fast(extra, message, tmp_path, capsys):
    rc = main(["attribute", "--model", "demo", "--task", "sst2", "--out", str(tmp_path), *extra])
    assert rc == 2 and message in capsys.readouterr().err


def test_full_run_on_stories(stories_dir, tmp_path, capsys):
    out = tmp_path / "nsa"
    rc = main(["attribute", "--model", str(stories_dir), "--task", "sst2", "--limit", "40", "--top-k", "6",
               "--min-df", "2", "--min-occurrences", "5", "--validation", "false", "--label-at-chance", "true", "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_examples"] == 40 and summary["words"]["n_words"] <= 12
    assert f"{summary['neurons']['labelled']} of {summary['neurons']['examined']} neurons labelled" in printed.out
    assert "attribute" in printed.err  # the progress bar
    assert len((out / "neuron_labels.jsonl").read_text().splitlines()) == summary["neurons"]["labelled"]
