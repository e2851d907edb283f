"""Run folders: manifest checksums catch missing and changed artifacts; listing with sizes; deletion."""
from __future__ import annotations

import json
import os

import pytest

from nsa.atomic import write_json
from nsa.errors import NSAError
from nsa.jobs import runs

RUN = "abc1230000000000"


def _make_run(run_id: str) -> None:
    with runs.run_entry(run_id).build() as tmp:
        write_json(tmp / "spec.json", {"model": "m", "prune": {"method": "wanda", "sparsity": 0.5}})
        write_json(tmp / "eval" / "pruned" / "summary.json", {"tasks": {"sst2": {"acc": 0.5}}})
        (tmp / "logs").mkdir()
        (tmp / "logs" / "job.log").write_text("stage prune\n")


def test_manifest_verify_list_delete(cache):
    _make_run(RUN)
    folder = runs.run_dir(RUN)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"spec.json", "eval/pruned/summary.json", "logs/job.log"}
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in manifest["files"].values())
    assert manifest["versions"]["torch"] and manifest["kind"] == "run" and runs.verify_run(RUN) == []
    listed = runs.list_runs()
    assert [r.id for r in listed] == [RUN] and listed[0].size > 0 and listed[0].spec["model"] == "m"

    write_json(folder / "eval" / "pruned" / "summary.json", {"tasks": {"sst2": {"acc": 0.9}}})  # same size
    (folder / "logs" / "job.log").unlink()
    problems = runs.verify_run(RUN)
    assert problems == ["eval/pruned/summary.json: checksum mismatch (corrupted or edited after it was written)",
                        "logs/job.log: missing"]
    assert runs.run_entry(RUN).good_files() == {"spec.json"}
    assert not runs.list_runs(verify=True)[0].ok

    (folder / "manifest.json").write_text("{not json")
    assert runs.verify_run(RUN) == ["manifest.json missing or unreadable (an incomplete or foreign folder)"]
    assert runs.verify_run("0" * 16) == ["missing"]

    (runs.runs_dir() / f".{RUN}.x1y2.tmp").mkdir()  # what a killed job leaves behind
    assert [r.id for r in runs.list_runs()] == [RUN]  # hidden folders are never runs
    runs.delete_run(RUN)
    assert not folder.exists() and not list(runs.runs_dir().iterdir())
    with pytest.raises(NSAError, match=f"no run '{RUN}'"):
        runs.delete_run(RUN)
    for bad in ("../etc", "abc123", "ABC1230000000000"):
        with pytest.raises(NSAError, match="not a run id"):
            runs.run_dir(bad)


def test_a_swap_killed_between_its_renames_keeps_the_complete_new_folder(cache):
    """atomic_dir replaces a folder with two renames; a death between them used to leave no run folder, and the
    next cleanup deleted both the old and the complete new copy. Now the complete new folder wins."""
    _make_run(RUN)
    folder = runs.run_dir(RUN)
    old = folder.with_name(f".{RUN}.old.12345")
    os.replace(folder, old)  # the first rename happened ...
    new = folder.with_name(f".{RUN}.abcdef.ready")
    _make_run("f" * 16)
    os.replace(runs.run_dir("f" * 16), new)  # ... a complete new folder was ready, and the process died
    runs.clean_partial(RUN)
    assert folder.is_dir() and not old.exists() and not new.exists()
    assert (folder / "manifest.json").is_file()
    # no ready copy: the old folder is put back
    os.replace(folder, old)
    runs.clean_partial(RUN)
    assert folder.is_dir() and runs.verify_run(RUN) == []
