"""Run folders (`cache_dir()/runs/<run_id>/`): manifest with checksums, verification, listing, deletion.

A run folder appears only complete: the pipeline builds it in a hidden temporary sibling
(`.<run_id>.*.tmp`, see `nsa.atomic.atomic_dir`) and renames it into place after writing `manifest.json`
(`{"files": {relpath: {"sha256", "size"}}, "created", "versions"}`). `verify_run` re-hashes every file the
manifest lists; a missing or changed artifact is reported (and a new submit of the spec recomputes it,
reusing the artifacts that still verify).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nsa.atomic import sha256_file, write_json
from nsa.errors import NSAError
from nsa.paths import cache_dir

MANIFEST = "manifest.json"
NOT_IN_MANIFEST = (MANIFEST,)


def runs_dir() -> Path:
    return cache_dir() / "runs"


def run_dir(run_id: str) -> Path:
    """Where run `run_id` lives (it exists only once the run is complete)."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise NSAError(f"not a run id: {run_id!r}")
    return runs_dir() / run_id


def file_entries(folder: Path) -> dict[str, dict]:
    """{relpath: {"sha256", "size"}} for every file under `folder` except the manifest itself."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in NOT_IN_MANIFEST:
            continue
        out[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return out


def write_manifest(folder: Path, versions: dict | None = None) -> dict:
    """Checksum every artifact in `folder` into `manifest.json` (the last file written in a run)."""
    manifest = {"files": file_entries(folder), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": versions or _versions()}
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None


def verify_folder(folder: Path, deep: bool = True) -> list[str]:
    """Problems with a run folder (empty list = every listed artifact is present and unchanged).

    `deep=False` checks presence and sizes only (instant, for frequent checks); `deep=True` re-hashes.
    """
    if not folder.is_dir():
        return [f"run folder missing: {folder}"]
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{MANIFEST} missing or unreadable in {folder}"]
    problems = []
    for rel, entry in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.get("size") or (deep and sha256_file(path) != entry.get("sha256")):
            problems.append(f"{rel}: checksum mismatch (corrupted or changed)")
    return problems


def verify_run(run_id: str, deep: bool = True) -> list[str]:
    """Problems with run `run_id` (see `verify_folder`); a run that does not exist is one problem."""
    return verify_folder(run_dir(run_id), deep=deep)


def good_files(folder: Path) -> set[str]:
    """Relative paths of the artifacts in `folder` whose checksums still match its manifest."""
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        return set()
    bad = {p.split(":", 1)[0] for p in verify_folder(folder)}
    return {rel for rel in manifest["files"] if rel not in bad}


@dataclass
class RunInfo:
    id: str
    path: Path
    size: int  # bytes on disk
    created: str
    ok: bool
    problems: list[str]
    spec: dict | None


def list_runs(verify: bool = False) -> list[RunInfo]:
    """Every complete run folder, newest first (`verify=True` re-hashes the artifacts: slower)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        manifest = read_manifest(folder)
        problems = verify_folder(folder) if verify else ([] if manifest else [f"{MANIFEST} missing"])
        try:
            spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            spec = None
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        out.append(RunInfo(id=folder.name, path=folder, size=size, created=(manifest or {}).get("created", ""),
                           ok=not problems, problems=problems, spec=spec))
    return sorted(out, key=lambda r: r.created, reverse=True)


def delete_run(run_id: str) -> None:
    """Remove a run folder (and any half-built temporary folder of it)."""
    folder = run_dir(run_id)
    if not folder.is_dir():
        raise NSAError(f"no run {run_id!r} under {runs_dir()} (list them with `python -m nsa runs`)")
    shutil.rmtree(folder)
    clean_partial(run_id)


def clean_partial(run_id: str) -> int:
    """Remove half-built temporary folders of `run_id` left by a killed job; returns how many."""
    root = runs_dir()
    n = 0
    for tmp in root.glob(f".{run_id}.*") if root.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        n += 1
    return n


def _versions() -> dict:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lm_eval"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
