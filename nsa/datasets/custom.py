"""User CSV/JSONL files as classification tasks, saved so every process (job workers, the app) sees them."""
from __future__ import annotations

import os
from pathlib import Path

from nsa.atomic import write_json
from nsa.datasets.loading import check_row, read_file, rename_fields
from nsa.datasets.registry import (
    add_task,
    custom_spec,
    custom_tasks_file,
    remove_task,
    saved_custom,
    task_or_none,
)
from nsa.datasets.spec import SENTIMENT_LABELS, SENTIMENT_PROMPT, TaskSpec
from nsa.errors import NSAError


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
    prompt = _default_prompt(labels) if prompt is None else prompt.replace("{" + text_field + "}", "{text}")
    spec = custom_spec(name, str(p.resolve()), labels, text_field, label_field, prompt)
    rows = read_file(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)
    if not rows:
        raise NSAError(f"custom task file {p} is empty (no rows)")
    for line, row in rows:
        check_row(spec, rename_fields(row, spec.field_map), line, str(p))
    add_task(spec)
    if save:
        saved = saved_custom()
        saved[name] = {"path": spec.path, "label_names": list(labels), "text_field": text_field,
                       "label_field": label_field, "prompt": spec.prompt}
        write_json(custom_tasks_file(), saved)
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
        write_json(custom_tasks_file(), saved)
