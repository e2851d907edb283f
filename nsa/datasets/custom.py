"""User CSV/JSONL files as classification tasks, saved so every process (job workers, the app) sees them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from nsa.atomic import write_json
from nsa.datasets.loading import check_row, read_file, rename_fields
from nsa.datasets.registry import add_task, remove_task, task_or_none
from nsa.datasets.spec import SENTIMENT_LABELS, SENTIMENT_PROMPT, TaskSpec
from nsa.errors import NSAError
from nsa.paths import cache_dir


def register_custom_task(path: str | os.PathLike, label_names: list[str] | tuple[str, ...],
                         name: str | None = None, text_field: str = "text", label_field: str = "label",
                         prompt: str | None = None, save: bool = True) -> TaskSpec:
    """Register a user CSV/JSONL (text + integer label) as a classification task; validates it at once.

    Labels are 0-based indices into `label_names`. Without `prompt`, negative/positive labels get the
    sentiment prompt; other label sets get "{text}\\nQuestion: Which is it: a, b or c?\\nAnswer:" with the
    label names as choices. Returns the spec; `name` defaults to the file's stem. With `save` (default)
    the registration is recorded in `cache_dir()/tasks/custom.json`, so other processes (job workers, the
    app) resolve the name too.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise NSAError(f"custom task file {p} does not exist")
    if p.suffix.lower() not in (".jsonl", ".json", ".csv", ".tsv"):
        raise NSAError(f"custom task file {p}: use .jsonl or .csv (got {p.suffix or 'no extension'})")
    labels = tuple(str(x).strip() for x in label_names)
    if len(labels) < 2 or any(not x for x in labels) or len(set(labels)) != len(labels):
        raise NSAError(f"custom task needs at least 2 distinct, non-empty label names, got {list(label_names)}")
    name = name or p.stem
    existing = task_or_none(name)
    if existing is not None and existing.group != "custom":
        raise NSAError(f"custom task name {name!r} is a built-in task; choose another name")
    field_map = ((text_field, "text"), (label_field, "label"))
    spec = TaskSpec(name=name, group="custom", kind="classification", description=f"custom task from {p}",
                    prompt=_default_prompt(labels) if prompt is None else prompt.replace("{" + text_field + "}",
                                                                                         "{text}"),
                    label_names=labels, path=str(p.resolve()), field_map=field_map)
    rows = read_file(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)
    if not rows:
        raise NSAError(f"custom task file {p} is empty (no rows)")
    for line, row in rows:
        check_row(spec, rename_fields(row, field_map), line, str(p))
    add_task(spec)
    if save:
        saved = saved_custom()
        saved[name] = {"path": spec.path, "label_names": list(labels), "text_field": text_field,
                       "label_field": label_field, "prompt": spec.prompt}
        write_json(_custom_file(), saved)
    return spec


def _default_prompt(labels: tuple[str, ...]) -> str:
    if labels == SENTIMENT_LABELS:
        return SENTIMENT_PROMPT
    options = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    return "{text}\nQuestion: Which is it: " + options + "?\nAnswer:"


def unregister_task(name: str) -> None:
    """Remove a custom task (built-ins stay), here and from the saved registry."""
    spec = task_or_none(name)
    if spec is not None and spec.group == "custom":
        remove_task(name)
    saved = saved_custom()
    if saved.pop(name, None) is not None:
        write_json(_custom_file(), saved)


def _custom_file() -> Path:
    return cache_dir() / "tasks" / "custom.json"


def saved_custom() -> dict:
    """Custom tasks registered by any process (so job workers and the app see the same registry)."""
    path = _custom_file()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}


def load_saved_custom(name: str) -> None:
    """Register a task saved by another process (no-op when unknown or its file is gone)."""
    entry = saved_custom().get(name)
    if entry is None or not Path(entry["path"]).is_file():
        return
    register_custom_task(entry["path"], entry["label_names"], name=name, text_field=entry["text_field"],
                         label_field=entry["label_field"], prompt=entry["prompt"], save=False)
