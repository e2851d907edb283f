"""Atomic writes: a reader never sees a half-written file or folder, and a crash never loses a complete one.

Files are written to a temporary sibling and `os.replace`d into place. Folders are built under a temporary
sibling `.<name>.<random>.tmp`; when the body finishes, that folder is renamed `.<name>.<random>.ready` (it is
complete from then on) and swapped in. Replacing an existing folder takes two renames (old → `.<name>.old.<pid>`,
ready → final); a process killed between them leaves no folder at `final`, and `recover_dir(final)` (called by
every reader that cleans up) puts the complete new folder in place, or the old one back when the new one never
became ready.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give them the mode a plain open()/mkdir() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `final`; on success it replaces `final` atomically."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        _default_mode(tmp_path, directory=False)
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(final: str | os.PathLike, obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def write_jsonl(final: str | os.PathLike, rows: Any) -> None:
    with atomic_path(final) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final` (see the module docstring)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _default_mode(tmp, directory=True)
        ready = tmp.with_suffix(".ready")
        os.replace(tmp, ready)
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(ready, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(ready, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(final: str | os.PathLike) -> None:
    """Finish a folder swap a killed process left half done: with no folder at `final`, the newest complete
    (`.ready`) folder wins, else the old folder is put back. Leaves unfinished `.tmp` folders alone (a live
    process may be building them); `clean_partial` removes those of dead jobs."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return
    ready = sorted(final.parent.glob(f".{final.name}.*.ready"), key=lambda p: p.stat().st_mtime)
    olds = sorted(final.parent.glob(f".{final.name}.old.*"), key=lambda p: p.stat().st_mtime)
    for candidate in (ready[-1:] or olds[-1:]):
        try:
            os.replace(candidate, final)
        except OSError:
            return


def clean_partial(final: str | os.PathLike) -> int:
    """Recover an interrupted swap of `final`, then remove every leftover temporary sibling (half-built
    folders of a killed build, stale `.old`/`.ready` copies); returns how many were removed. Call it only when
    no live process is building `final`."""
    final = Path(final)
    recover_dir(final)
    n = 0
    for leftover in final.parent.glob(f".{final.name}.*") if final.parent.is_dir() else []:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        n += 1
    return n
