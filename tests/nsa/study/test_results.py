"""The results table from real run folders (made by the real pipeline), reuse, CSV, the CLI and figures."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from nsa.cli import main
from nsa.jobs.runs import run_dir
from nsa.study import load_study, runner
from nsa.study.results import COLUMNS, results_table, write_csv
from nsa_app import study_figures as figures
from nsa_app.study_report import report_from_table


def test_finished_runs_are_reused(tiny_study):
    path, plan = tiny_study
    again = runner.plan(load_study(path))
    assert again.finished == {r.run_id for r in again.runs} and not again.to_run
    assert runner.submit(again) == []  # nothing queued
    state = runner.progress(again)
    assert state.done == state.total == 2 and state.active == 0 and state.fraction == 1.0


def test_table_matches_the_run_folders(tiny_study):
    _, plan = tiny_study
    table = runner.study_table(plan)
    assert list(table.columns) == COLUMNS
    assert len(table) == 2 * 2  # runs x tasks
    assert sorted(table["sparsity"].unique()) == [0.3, 0.7]
    assert dict(zip(table["task"], table["group"])) == {"sst2": "sentiment", "rte": "inference"}
    for row in table.itertuples():
        folder = run_dir(row.run_id)
        dense = json.loads((folder / "eval" / "dense" / "summary.json").read_text())["tasks"][row.task]
        pruned = json.loads((folder / "eval" / "pruned" / "summary.json").read_text())["tasks"][row.task]
        assert row.n == 12 == pruned["n"]
        assert row.dense_accuracy == pytest.approx(dense["acc"])  # the harness's own numbers
        assert row.accuracy == pytest.approx(pruned["acc"])
        assert row.drop == pytest.approx(row.dense_accuracy - row.accuracy)
        assert row.dense_chance == pytest.approx(dense["majority_baseline"])
        k = round(dense["acc"] * dense["n"])  # the exact binomial tail against the best constant guess, by hand
        tail = sum(math.comb(12, i) * row.dense_chance ** i * (1 - row.dense_chance) ** (12 - i) for i in range(k, 13))
        assert row.dense_above_chance == (tail < 0.05)
        assert row.drop_ci_low <= row.drop <= row.drop_ci_high
        assert row.accuracy_ci_low <= row.accuracy <= row.accuracy_ci_high
        assert (row.method, row.source, row.seed, row.nsamples, row.profile) == ("wanda", "sst2", 0, 4, "uniform")


def test_csv_round_trip(tiny_study, tmp_path):
    _, plan = tiny_study
    table = runner.study_table(plan)
    back = pd.read_csv(write_csv(table, tmp_path / "t.csv"))
    assert list(back.columns) == COLUMNS and len(back) == len(table)
    assert back["accuracy"].tolist() == pytest.approx(table["accuracy"].tolist())


def test_unfinished_folder_has_no_rows(tmp_path):
    assert results_table([tmp_path / "nothing-here"]).empty


def test_cli_dry_run_results_and_csv(tiny_study, tmp_path, capsys):
    path, _ = tiny_study
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 runs; 2 finished (reused), 0 to run" in out and out.count("finished") >= 3
    assert main(["study", str(path)]) == 0  # everything finished: nothing queued, no worker started
    assert "every run is finished" in capsys.readouterr().err
    csv = tmp_path / "out.csv"
    assert main(["study", str(path), "--results", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 runs finished, 4 rows" in out and "sentiment vs other tasks" in out
    assert len(pd.read_csv(csv)) == 4


def test_cli_bad_inputs(tiny_study, tmp_path, capsys):
    path, _ = tiny_study
    assert main(["study", str(path), "--max-runs", "1"]) == 2
    assert "make 2 grid points, more than the limit of 1" in capsys.readouterr().err
    assert main(["study", str(path), "--csv", "x.csv"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model: demo}\naxes:\n  sparsity: []\n")
    assert main(["study", str(bad), "--dry-run"]) == 2
    assert "line 3: axis 'sparsity' has no values" in capsys.readouterr().err


def test_figures_from_real_table(tiny_study):
    _, plan = tiny_study
    view = report_from_table(runner.study_table(plan))
    assert view.default_task == "sst2" and view.tasks == ["rte", "sst2"] or set(view.tasks) == {"rte", "sst2"}
    fig = view.accuracy_figure("sst2")
    lines = [t for t in fig.data if t.name == "wanda"]
    assert list(lines[0].x) == [0.3, 0.7]
    expected = view.table[view.table["task"] == "sst2"].sort_values("sparsity")["accuracy"].tolist()
    assert list(lines[0].y) == pytest.approx(expected)
    assert view.breakpoints.empty  # 2 sparsities: too few for a breakpoint, skipped
    groups = view.group_figure()
    assert {t.name for t in groups.data} == {"sentiment", "inference"}
    heat = figures.calibration_heatmap(view.table)
    assert len(heat.data) == 2  # one panel per sparsity
    assert view.group_effect.loc[0, "n_runs"] == 2
    assert view.calibration_effect.empty  # one calibration source
