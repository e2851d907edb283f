"""Loading a task's rows: explicit file -> NSA_DATA_DIR -> the hub, validated line by line.

Rows come back in the local JSONL schema (see `nsa.datasets`), each with its `index`. Validation names the
file and line of a missing column, a non-integer label or a label outside the label names.
"""
from __future__ import annotations

import csv
import json
import os
import re
from functools import lru_cache
from pathlib import Path

from nsa.datasets.hub import HF_NORMALIZERS, LOCAL_FIXUPS
from nsa.datasets.registry import check_meta, get_task
from nsa.datasets.spec import TaskSpec
from nsa.errors import NSAError
from nsa.hub import ensure_offline_if_unreachable, is_offline
from nsa.paths import data_dir
from nsa.userfiles import open_text, read_text


def load_examples(name: str | TaskSpec, limit: int | None = None, split: str | None = None,
                  path: str | os.PathLike | None = None) -> list[dict]:
    """Rows of a task in the local schema, each with `index`; `limit` keeps the first N rows.

    `path` overrides where the rows come from (a JSONL or CSV file); `split` picks another local split
    (e.g. "train_sample"); otherwise the spec's own file, then NSA_DATA_DIR, then the hub.
    """
    spec = get_task(name)
    check_limit(limit)
    rows = _load_rows(spec, split, path)
    if not rows:
        raise NSAError(f"task {spec.name!r}: the dataset is empty (no rows); check the file or split")
    rows = rows[:limit] if limit is not None else rows
    return [{**row, "index": row.get("index", i)} for i, row in enumerate(rows)]


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise NSAError(f"limit must be a positive integer or None (all rows), got {limit!r}")


def local_file(spec: TaskSpec, split: str | None = None) -> Path | None:
    """The local JSONL for this task/split when it exists (explicit path first, then NSA_DATA_DIR)."""
    if spec.path and split is None:
        return Path(spec.path)
    root = data_dir()
    if spec.local_name and root is not None:
        return root / spec.local_name / f"{split or spec.split}.jsonl"
    return None


def data_file(name: str | TaskSpec) -> Path | None:
    """The local file a task's evaluation rows come from (None when they come from the hub)."""
    candidate = local_file(get_task(name))
    return candidate if candidate is not None and candidate.is_file() else None


def _load_rows(spec: TaskSpec, split: str | None, path: str | os.PathLike | None) -> list[dict]:
    tried: list[str] = []
    if path is not None:
        return _read_validated(spec, Path(path))
    candidate = local_file(spec, split)
    if candidate is not None:
        if candidate.is_file():
            check_meta(spec, candidate.parent)
            return _read_validated(spec, candidate)
        tried.append(f"local file {candidate} (missing)")
        if spec.path and split is None:
            hint = " (run `python -m nsa demo build`)" if spec.synthetic else ""
            raise NSAError(f"task {spec.name!r}: file {candidate} does not exist{hint}")
    elif spec.local_name:
        tried.append("NSA_DATA_DIR (not set; point it at a folder laid out as <name>/<split>.jsonl)")
    if split is not None and split != spec.split:
        raise NSAError(f"task {spec.name!r}: no local split {split!r}; tried: {'; '.join(tried)}; "
                       f"local splits: {', '.join(_local_splits(spec)) or 'none'}")
    if spec.hf_id is None:
        raise NSAError(f"task {spec.name!r}: no data found; tried: {'; '.join(tried)}")
    return _load_hub(spec, tried)


def _local_splits(spec: TaskSpec) -> list[str]:
    root = data_dir()
    if root is None or not spec.local_name or not (root / spec.local_name).is_dir():
        return []
    return sorted(p.stem for p in (root / spec.local_name).glob("*.jsonl"))


def _load_hub(spec: TaskSpec, tried: list[str]) -> list[dict]:
    ensure_offline_if_unreachable()
    where = f"{spec.hf_id}" + (f" ({spec.hf_config})" if spec.hf_config else "") + f" split {spec.hf_split}"
    try:
        import datasets

        ds = datasets.load_dataset(spec.hf_id, spec.hf_config, split=spec.hf_split)
    except Exception as err:  # noqa: BLE001 - every hub failure becomes the same clear message
        mode = "offline and not in the hub cache" if is_offline() else f"could not be loaded ({err})"
        raise NSAError(
            f"task {spec.name!r}: no data. Tried {'; '.join(tried + [f'hub dataset {where}: {mode}'])}. "
            f"Options: set NSA_DATA_DIR to a folder with {spec.local_name}/{spec.split}.jsonl "
            "(e.g. ../shared/data), pass an explicit file, or go online once to fill the hub cache."
        ) from None
    normalize = HF_NORMALIZERS[spec.hf_normalizer or "text"]
    rows = [r for r in (normalize(dict(row)) for row in ds) if r is not None]
    return [check_row(spec, r, i + 1, where) for i, r in enumerate(rows)]


def _read_validated(spec: TaskSpec, path: Path) -> list[dict]:
    if not path.is_file():
        raise NSAError(f"task {spec.name!r}: file {path} does not exist")
    stat = path.stat()
    rows = read_file(str(path), stat.st_mtime_ns, stat.st_size)
    fix = LOCAL_FIXUPS.get(spec.name, lambda r: r)
    return [fix(check_row(spec, rename_fields(r, spec.field_map), line, str(path))) for line, r in rows]


@lru_cache(maxsize=32)
def read_file(path: str, _mtime: int, _size: int) -> tuple[tuple[int, dict], ...]:
    """(line number, row) of a JSONL or CSV file; cached by (path, mtime, size)."""
    p = Path(path)
    if p.suffix.lower() in (".csv", ".tsv"):
        delim = "\t" if p.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(open_text(p, "data file"), delimiter=delim)
        return tuple((i + 2, dict(row)) for i, row in enumerate(reader))  # line 1 is the header
    out = []
    for i, line in enumerate(read_text(p, "data file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise NSAError(f"{p}, line {i}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise NSAError(f"{p}, line {i}: expected a JSON object per line, got {type(row).__name__}")
        out.append((i, row))
    return tuple(out)


def check_row(spec: TaskSpec, row: dict, line: int, where: str) -> dict:
    """Missing fields, non-integer labels and labels outside the label names, naming the line."""
    missing = [f for f in spec.required_fields if f not in row or row[f] is None]
    if missing:
        raise NSAError(f"{where}, line {line}: missing column(s) {', '.join(missing)} for task {spec.name!r} "
                       f"(needs {', '.join(spec.required_fields)}; found {', '.join(map(str, row))})")
    key = "label" if spec.kind == "classification" else "answer" if spec.kind == "multiple_choice" else None
    if key is None:
        if not isinstance(row["text"], str):
            raise NSAError(f"{where}, line {line}: 'text' must be a string")
        return row
    value = row[key]
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)  # CSV cells are strings
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NSAError(f"{where}, line {line}: {key} {row[key]!r} is not an integer; labels are 0-based "
                       f"indices into {list(spec.label_names) or 'choices'}")
    n = len(spec.label_names) if key == "label" else len(row["choices"] if not spec.partial else row["contexts"])
    if not 0 <= value < n:
        names = f"label names {list(spec.label_names)}" if key == "label" else f"{n} choices"
        raise NSAError(f"{where}, line {line}: {key} {value} is outside the {names} (valid: 0..{n - 1})")
    row[key] = value
    return row



def rename_fields(row: dict, field_map: tuple[tuple[str, str], ...]) -> dict:
    """Rename a file's columns to the schema's fields (custom files with e.g. "review" / "y" columns)."""
    if not field_map:
        return row
    out = dict(row)
    for column, field in field_map:
        if column in out and column != field:
            out[field] = out.pop(column)
    return out
