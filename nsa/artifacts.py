"""The one artifact layer: every result the project keeps on disk is a folder with a manifest.

A run folder (`cache/runs/<run id>/`) and every shared cache entry (`cache/<kind>/<key>/`: dense evaluations,
NSA's dense statistics, gradient words, calibration sets, converted models, the app's derived tables) are the
same thing, an `Entry`:

- its key is a canonical digest of what decides its content (`digest`), including a format version, so a
  change of meaning makes new entries instead of misreading old ones;
- it is built in a temporary folder and swapped in atomically (`nsa.atomic.atomic_dir`), and its
  `manifest.json`, written last, lists every file with its size and sha256: a folder with a manifest is complete;
- whoever reads it verifies it first (`Entry.problems`): sizes always, hashes once per process per file (a file
  whose size or modification time changed is hashed again), so a byte flipped after the fact is caught;
- a bad shared entry is rebuilt and the log says why (`Entry.ensure`); a bad run is reported with its problems.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from nsa.atomic import atomic_dir, clean_partial, recover_dir, write_json
from nsa.errors import NSAError
from nsa.paths import cache_dir

MANIFEST = "manifest.json"
_HASHED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, for this process


def digest(obj: Any, length: int = 20) -> str:
    """Hex sha256 of the canonical JSON of `obj` (sorted keys, no spaces): the one key builder."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (1 MiB blocks), remembered for this process by (path, size, mtime)."""
    st = os.stat(path)
    stamp = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if stamp not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHED[stamp] = h.hexdigest()
    return _HASHED[stamp]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lm_eval"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass(frozen=True)
class Entry:
    """A folder of artifacts with a checksummed manifest (see the module docstring)."""

    folder: Path
    kind: str
    format: int = 1

    @classmethod
    def keyed(cls, kind: str, format: int, parts: dict) -> "Entry":
        """The shared cache entry of `kind` whose content is decided by `parts`."""
        return cls(cache_dir() / kind / digest([kind, format, parts]), kind, format)

    @property
    def key(self) -> str:
        return self.folder.name

    def path(self, rel: str) -> Path:
        return self.folder / rel

    def manifest(self) -> dict | None:
        try:
            data = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("files"), dict) else None

    def problems(self, deep: bool | None = None) -> list[str]:
        """What is wrong with the entry ([] = complete and unchanged). `deep=None`: sizes always, hashes once per
        process per file; `deep=True` re-hashes every file; `deep=False` checks presence and sizes only."""
        recover_dir(self.folder)
        if not self.folder.is_dir():
            return ["missing"]
        manifest = self.manifest()
        if manifest is None:
            return [f"{MANIFEST} missing or unreadable (an incomplete or foreign folder)"]
        if manifest.get("format", self.format) != self.format:
            return [f"format {manifest.get('format')} is not the current format {self.format}"]
        if deep:
            _forget_folder(self.folder)
        out = []
        for rel, info in manifest["files"].items():
            path = self.folder / rel
            if not path.is_file():
                out.append(f"{rel}: missing")
            elif path.stat().st_size != info.get("size"):
                out.append(f"{rel}: size {path.stat().st_size} bytes, the manifest says {info.get('size')}")
            elif deep is not False and sha256_file(path) != info.get("sha256"):
                out.append(f"{rel}: checksum mismatch (corrupted or edited after it was written)")
        return out

    def file_problem(self, rel: str) -> str | None:
        """What is wrong with one listed file (None = present and unchanged: size always, hash once per
        process); "not in the manifest" for a file the entry does not hold."""
        manifest = _cached_manifest(self.folder)
        if manifest is None:
            return f"{MANIFEST} missing or unreadable"
        info = manifest["files"].get(rel)
        if info is None:
            return "not in the manifest"
        path = self.folder / rel
        if not path.is_file():
            return "missing"
        if path.stat().st_size != info.get("size"):
            return f"size {path.stat().st_size} bytes, the manifest says {info.get('size')}"
        if sha256_file(path) != info.get("sha256"):
            return "checksum mismatch (corrupted or edited after it was written)"
        return None

    def complete(self, deep: bool | None = None) -> bool:
        return not self.problems(deep)

    def good_files(self) -> set[str]:
        """Files whose checksums still match the manifest (what a partial recompute can reuse)."""
        manifest = self.manifest()
        if manifest is None:
            return set()
        bad = {p.split(":", 1)[0] for p in self.problems(deep=None)}
        return {rel for rel in manifest["files"] if rel not in bad}

    @contextmanager
    def build(self, meta: dict | None = None) -> Iterator[Path]:
        """Yield a temporary folder to fill; on success its manifest is written and it replaces the entry."""
        with atomic_dir(self.folder) as tmp:
            yield tmp
            write_manifest(tmp, self.kind, self.format, meta)

    def ensure(self, fill: Callable[[Path], None], log: Callable[[str], None] | None = None) -> "Entry":
        """The entry, built by `fill(tmp_folder)` when it is missing or fails verification (logged)."""
        problems = self.problems()
        if not problems:
            return self
        if problems != ["missing"] and log is not None:
            log(f"{self.kind} cache entry {self.key} is bad ({problems[0]}): recomputing it")
        with self.build() as tmp:
            fill(tmp)
        return self

    def clean_partial(self) -> int:
        """Recover an interrupted swap, then remove leftovers of a killed build (no live builder may run)."""
        return clean_partial(self.folder)

    # --- moving an entry between machines (the Ray executor's staging mode) -------------------------------
    def export(self) -> dict:
        """The complete entry as data: {"manifest": dict, "files": {rel: bytes}}, to rebuild it elsewhere with
        `receive`. `NSAError` when it does not verify (sizes; hashes once per process)."""
        problems = self.problems()
        if problems:
            raise NSAError(f"{self.kind} entry {self.key} cannot be sent: {problems[0]}")
        manifest = self.manifest()
        return {"manifest": manifest, "files": {rel: self.path(rel).read_bytes() for rel in manifest["files"]}}

    def receive(self, data: dict) -> None:
        """Build this entry from `export()`ed data made elsewhere: the files must be exactly those the sender's
        manifest lists, each with its size and sha256, before the folder is swapped in with that manifest
        (`NSAError` naming the first bad file; then nothing changes)."""
        manifest, files = data.get("manifest"), data.get("files")
        listed = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(listed, dict) or not isinstance(files, dict):
            raise NSAError(f"{self.kind} entry {self.key}: received data without a manifest or files")
        if set(files) != set(listed):
            odd = sorted(set(files) ^ set(listed))
            raise NSAError(f"{self.kind} entry {self.key}: received files differ from its manifest ({odd[0]})")
        if manifest.get("format", self.format) != self.format:
            raise NSAError(f"{self.kind} entry {self.key}: received format {manifest.get('format')}, expected "
                           f"{self.format} (the sender runs another version)")
        for rel, blob in files.items():
            info = listed[rel]
            if len(blob) != info.get("size") or hashlib.sha256(blob).hexdigest() != info.get("sha256"):
                raise NSAError(f"{self.kind} entry {self.key}: {rel} does not match its manifest's checksum "
                               "(damaged on the way)")
        with atomic_dir(self.folder) as tmp:
            for rel, blob in files.items():
                target = (tmp / rel).resolve()
                if tmp.resolve() not in target.parents:
                    raise NSAError(f"{self.kind} entry {self.key}: file name {rel!r} leaves the folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
            write_json(tmp / MANIFEST, manifest)


def write_manifest(folder: Path, kind: str, format: int, meta: dict | None = None) -> dict:
    """Checksum every file under `folder` into its manifest (the last file written in an entry)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {"kind": kind, "format": format, "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions(),
                **({"meta": meta} if meta else {})}
    write_json(folder / MANIFEST, manifest)
    return manifest


_MANIFESTS: dict[tuple[str, int, int], dict | None] = {}


def _cached_manifest(folder: Path) -> dict | None:
    """The folder's manifest, parsed once per (size, mtime) of the file."""
    path = folder / MANIFEST
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp not in _MANIFESTS:
        if len(_MANIFESTS) > 512:
            _MANIFESTS.clear()
        _MANIFESTS[stamp] = Entry(folder, "").manifest()
    return _MANIFESTS[stamp]


def _forget_folder(folder: Path) -> None:
    prefix = str(folder.resolve()) + os.sep
    for stamp in [s for s in _HASHED if s[0].startswith(prefix)]:
        del _HASHED[stamp]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
