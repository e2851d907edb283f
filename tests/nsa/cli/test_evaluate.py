"""`python -m nsa evaluate / compare-eval / tasks / calibrate`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nsa.cli import main
from tests.conftest import ROOT, child_cpu


def test_help_is_quick_and_leaves_the_harness_unloaded():
    """--help imports the project's modules (torch with them: a second or two of CPU) but not
    lm-evaluation-harness. CPU time, not wall time: a loaded machine stretches the wall clock, not the work."""
    start = child_cpu()
    out = subprocess.run([sys.executable, "-m", "nsa", "evaluate", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "--masks" in out.stdout and "--limit" in out.stdout
    assert child_cpu() - start < 10
    code = ("import sys\nfrom nsa.cli import main\ntry:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('heavy:', [m for m in ('lm_eval', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "heavy: []" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "sst2,nope"], "unknown dataset/task 'nope'"),
    (["--limit", "0"], "limit must be a positive integer"),
    (["--limit", "-5"], "limit must be a positive integer"),
    (["--masks", "/nonexistent/masks.safetensors"], "--masks file /nonexistent/masks.safetensors does not exist"),
])
def test_bad_arguments_fail_before_loading_the_model(argv, message, capsys, tmp_path):
    rc = main(["evaluate", "--model", "/nonexistent-model", "--out", str(tmp_path)] + argv)
    assert rc == 2 and message in capsys.readouterr().err


def test_custom_file_with_bad_label_names_the_line(capsys, tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("text,label\ngood,1\nbad,negative\n")
    rc = main(["evaluate", "--model", "x", "--out", str(tmp_path), "--custom", str(f)])
    assert rc == 2 and "line 3: label 'negative' is not an integer" in capsys.readouterr().err


def test_tasks_lists_the_registry(capsys):
    assert main(["tasks", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [t["name"] for t in data["tasks"]]
    assert names[:2] == ["sst2", "yelp_polarity"] and "c4" in data["calibration_sources"]


def test_compare_eval_needs_evaluation_folders(capsys, tmp_path):
    assert main(["compare-eval", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "not an evaluation folder" in capsys.readouterr().err


def test_evaluate_stories260k_end_to_end(stories_dir, tmp_path, capsys):
    out = tmp_path / "dense"
    rc = main(["evaluate", "--model", str(stories_dir), "--tasks", "sst2,sentiment140", "--limit", "6",
               "--out", str(out), "--batch-size", "8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["sst2"]["n"] == 6 and summary["limit"] == 6
    records = [json.loads(line) for line in (out / "sentiment140.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {"index", "gold", "prediction", "loglik", "correct"} <= set(records[0])
    assert "sst2" in captured.out and "acc" in captured.out
    assert main(["compare-eval", str(out), str(out)]) == 0  # a run against itself: no drop, no flips
    assert "drop +0.0000" in capsys.readouterr().out


def test_evaluate_with_masks_flag(stories_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(stories_dir / "model.safetensors"))
    masks = {f"model.{k}" if not k.startswith("model.") else k: (v.abs() < v.abs().median()).to(torch.uint8)
             for k, v in weights.items() if ".mlp." in k}
    save_file(masks, str(tmp_path / "masks.safetensors"))
    for name, extra in (("dense", []), ("pruned", ["--masks", str(tmp_path / "masks.safetensors")])):
        assert main(["evaluate", "--model", str(stories_dir), "--tasks", "sst2", "--limit", "8",
                     "--out", str(tmp_path / name)] + extra) == 0, capsys.readouterr().err
    assert main(["compare-eval", str(tmp_path / "dense"), str(tmp_path / "pruned"), "--out",
                 str(tmp_path / "cmp.json")]) == 0
    cmp = json.loads((tmp_path / "cmp.json").read_text())["tasks"]["sst2"]
    assert cmp["n"] == 8 and cmp["prediction_changed"] >= 0


def test_ppl_seqlen_sets_the_perplexity_window(stories_dir, tmp_path, capsys):
    """--ppl-seqlen cuts WikiText-2 into windows of that many tokens and --limit caps how many are scored."""
    rc = main(["evaluate", "--model", str(stories_dir), "--tasks", "wikitext2", "--limit", "3", "--ppl-seqlen", "64",
               "--out", str(tmp_path / "ppl")])
    assert rc == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "ppl" / "summary.json").read_text())["tasks"]["wikitext2"]
    assert entry["seqlen"] == 64 and entry["n_windows"] == 3 and entry["ppl"] > 1
    assert "3 windows of 64" in capsys.readouterr().out
    assert main(["evaluate", "--model", "x", "--tasks", "wikitext2", "--ppl-seqlen", "0", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "--ppl-seqlen 0: must be a positive integer" in capsys.readouterr().err
