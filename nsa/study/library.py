"""Where studies live: the shipped ones in `studies/`, the ones defined in the app under `cache/studies/`."""
from __future__ import annotations

import re
from pathlib import Path

from nsa.atomic import write_text
from nsa.errors import NSAError
from nsa.paths import PROJECT_ROOT, cache_dir
from nsa.study.spec import (
    DEFAULT_MAX_RUNS,
    StudySpec,
    dump_study,
    load_study,
    parse_study,
)

SHIPPED_DIR = PROJECT_ROOT / "studies"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def saved_dir() -> Path:
    return cache_dir() / "studies"


def list_studies() -> dict[str, Path]:
    """name -> file, the app's saved studies first, then the shipped ones (a saved one shadows a shipped name)."""
    out: dict[str, Path] = {}
    for folder in (saved_dir(), SHIPPED_DIR):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            out.setdefault(path.stem, path)
    return out


def find_study(name: str) -> StudySpec:
    """A study by name (as `list_studies` names it) or by path."""
    studies = list_studies()
    if name in studies:
        return load_study(studies[name])
    if Path(name).suffix in (".yaml", ".yml"):
        return load_study(name)
    raise NSAError(f"no study named {name!r}; known: {', '.join(studies) or 'none'}")


def save_study(study: StudySpec) -> Path:
    """Write a study defined in the app to `cache/studies/<name>.yaml` (validated by reading it back)."""
    if not NAME_RE.match(study.name or ""):
        raise NSAError(f"study name {study.name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                       "starting with a letter or digit")
    if (SHIPPED_DIR / f"{study.name}.yaml").is_file():
        raise NSAError(f"{study.name!r} is a shipped study (studies/{study.name}.yaml); choose another name")
    text = dump_study(study)
    parse_study(text, source=study.name)
    path = saved_dir() / f"{study.name}.yaml"
    write_text(path, text)
    study.path = str(path)
    return path


def make_study(name: str, base: dict, axes: dict[str, list], max_runs: int | None = None,
               description: str = "") -> StudySpec:
    """A study from the app's form values, validated exactly as a file would be (round trip through YAML)."""
    draft = StudySpec(base=base, axes=axes, name=name or "study", description=description,
                      max_runs=max_runs or DEFAULT_MAX_RUNS)
    return parse_study(dump_study(draft), source=f"study {name!r}")
