"""Atomic writes: nothing half-written is visible, and artifacts get ordinary file modes."""
from __future__ import annotations

import os
import stat

import pytest

from nsa.atomic import atomic_dir, atomic_path, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "run") as tmp:
            (tmp / "f.txt").write_text("y")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644  # mkstemp alone would leave 0600
    assert _mode(tmp_path / "run") == 0o755
    assert (tmp_path / "run" / "f.txt").read_text() == "y"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert (tmp_path / "a.json").read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
