"""Run folders: manifest checksums catch missing and changed artifacts; listing with sizes; deletion."""
from __future__ import annotations

import json

import pytest

from nsa.atomic import atomic_dir, write_json
from nsa.errors import NSAError
from nsa.jobs import runs


def _make_run(run_id: str) -> None:
    with atomic_dir(runs.run_dir(run_id)) as tmp:
        write_json(tmp / "spec.json", {"model": "m", "prune": {"method": "wanda", "sparsity": 0.5}})
        write_json(tmp / "eval" / "pruned" / "summary.json", {"tasks": {"sst2": {"acc": 0.5}}})
        (tmp / "logs").mkdir()
        (tmp / "logs" / "job.log").write_text("stage prune\n")
        runs.write_manifest(tmp)


def test_manifest_verify_list_delete(cache):
    _make_run("abc123")
    folder = runs.run_dir("abc123")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"spec.json", "eval/pruned/summary.json", "logs/job.log"}
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in manifest["files"].values())
    assert manifest["versions"]["torch"] and runs.verify_run("abc123") == []
    listed = runs.list_runs()
    assert [r.id for r in listed] == ["abc123"] and listed[0].size > 0 and listed[0].spec["model"] == "m"

    (folder / "eval" / "pruned" / "summary.json").write_text('{"tasks": {"sst2": {"acc": 0.9}}}\n')
    (folder / "logs" / "job.log").unlink()
    problems = runs.verify_run("abc123")
    assert problems == ["eval/pruned/summary.json: checksum mismatch (corrupted or changed)", "logs/job.log: missing"]
    assert runs.good_files(folder) == {"spec.json"}
    assert not runs.list_runs(verify=True)[0].ok

    (folder / "manifest.json").write_text("{not json")
    assert runs.verify_run("abc123") == [f"manifest.json missing or unreadable in {folder}"]
    assert runs.verify_run("nothing")[0].startswith("run folder missing")

    (runs.runs_dir() / ".abc123.x1y2.tmp").mkdir()  # what a killed job leaves behind
    assert [r.id for r in runs.list_runs()] == ["abc123"]  # hidden folders are never runs
    runs.delete_run("abc123")
    assert not folder.exists() and not list(runs.runs_dir().iterdir())
    with pytest.raises(NSAError, match="no run 'abc123'"):
        runs.delete_run("abc123")
    with pytest.raises(NSAError, match="not a run id"):
        runs.run_dir("../etc")
