"""A study file: one base job spec plus axes whose values are crossed into a grid of runs.

```yaml
name: demo                      # optional, shown in progress and on the Study page
max_runs: 200                   # optional: a grid larger than this needs --yes (default DEFAULT_MAX_RUNS)
base:                           # a job spec (nsa.jobs.spec); the axes override parts of it
  model: demo
  prune: {method: wanda, sparsity: 0.5, pattern: unstructured}
  calibration: {source: demo-generic, nsamples: 8, seqlen: 128, seed: 0}
  evaluate: {tasks: [demo-reviews], limit: 100}
axes:                           # each axis: a non-empty list of values
  method: [magnitude, wanda, sparsegpt]
  sparsity: [0.3, 0.5, 0.7]
  seed: [0, 1, 2]
```

Axis names are the short names in `AXES` (method, pattern, sparsity, source, nsamples, seqlen, seed, model) or
a dotted path into the spec (`prune.options.alpha`). Errors carry the file's line: a file that does not parse,
an unknown key, an axis with no values, a duplicated key or value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsa.errors import NSAError
from nsa.userfiles import check_expansion, read_text

DEFAULT_MAX_RUNS = 200

# short axis name -> path in the job spec (issue 6's structure)
AXES: dict[str, tuple[str, ...]] = {
    "model": ("model",),
    "method": ("prune", "method"),
    "sparsity": ("prune", "sparsity"),
    "pattern": ("prune", "pattern"),
    "source": ("calibration", "source"),
    "nsamples": ("calibration", "nsamples"),
    "seqlen": ("calibration", "seqlen"),
    "seed": ("calibration", "seed"),
}
AXIS_ALIASES = {"calibration": "source", "calibration_source": "source", "sparsities": "sparsity",
                "methods": "method", "seeds": "seed", "models": "model", "patterns": "pattern",
                "sources": "source"}
# first components a dotted axis path may start with (the job spec's sections)
SPEC_SECTIONS = ("model", "prune", "calibration", "evaluate", "nsa")
TOP_KEYS = {"name": "a label for the study", "description": "free text", "base": "the base job spec (mapping)",
            "axes": "mapping axis -> list of values", "max_runs": "largest grid run without --yes"}


@dataclass
class StudySpec:
    """A parsed study: `axes` keeps the file's order (the first axis varies slowest)."""

    base: dict
    axes: dict[str, list]
    name: str = "study"
    description: str = ""
    max_runs: int = DEFAULT_MAX_RUNS
    path: str | None = None
    axis_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of grid points (before identical specs are merged)."""
        return math.prod(len(v) for v in self.axes.values())

    def to_dict(self) -> dict:
        """The YAML structure back (what the Study page writes and `dump_study` saves)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["max_runs"] = self.max_runs
        out["base"] = self.base
        out["axes"] = {k: list(v) for k, v in self.axes.items()}
        return out


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; every problem is an `NSAError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise NSAError(f"study file {path} does not exist (give the path to a STUDY.yaml, e.g. studies/demo.yaml)")
    study = parse_study(read_text(path, "study file"), source=str(path))
    study.path = str(path)
    if study.name == "study":
        study.name = path.stem
    return study


def parse_study(text: str, source: str = "<study>") -> StudySpec:
    """Parse study YAML text (see the module docstring for the structure)."""
    root = _compose(text, source)
    if root is None:
        raise NSAError(f"{source}: the study file is empty; it needs `base:` (a job spec) and `axes:`")
    if not isinstance(root, yaml.MappingNode):
        raise NSAError(f"{source} line {_line(root)}: a study must be a mapping with `base:` and `axes:`, "
                       f"got {_kind(root)}")
    top = _mapping(root, source, "the study")
    for key, (knode, _) in top.items():
        if key not in TOP_KEYS:
            raise NSAError(f"{source} line {_line(knode)}: unknown key {key!r}; a study has "
                           + ", ".join(f"{k} ({v})" for k, v in TOP_KEYS.items()))
    for required in ("base", "axes"):
        if required not in top:
            raise NSAError(f"{source}: missing `{required}:` ({TOP_KEYS[required]})")
    base_node = top["base"][1]
    if not isinstance(base_node, yaml.MappingNode):
        raise NSAError(f"{source} line {_line(base_node)}: `base:` must be a mapping (a job spec with model, "
                       f"prune, calibration, evaluate), got {_kind(base_node)}")
    _mapping(base_node, source, "base")  # duplicate keys are errors at any level
    base = _construct(base_node, source)
    axes, paths = _parse_axes(top["axes"][1], source)
    study = StudySpec(base=base, axes=axes, axis_paths=paths)
    if "name" in top:
        study.name = _scalar_str(top["name"][1], source, "name")
    if "description" in top:
        study.description = _scalar_str(top["description"][1], source, "description")
    if "max_runs" in top:
        study.max_runs = _positive_int(top["max_runs"][1], source)
    return study


def axis_path(name: str) -> tuple[str, ...] | None:
    """The spec path an axis name sets, or None when the name is neither a short name nor a dotted path."""
    name = AXIS_ALIASES.get(name, name)
    if name in AXES:
        return AXES[name]
    parts = tuple(name.split("."))
    if len(parts) >= 2 and parts[0] in SPEC_SECTIONS and all(parts):
        return parts
    return None


def dump_study(study: StudySpec) -> str:
    """YAML text of a study (what the Study page saves; `parse_study` reads it back)."""
    return yaml.safe_dump(study.to_dict(), sort_keys=False, default_flow_style=None)


# --- helpers ------------------------------------------------------------------------------------------
def _parse_axes(node: yaml.Node, source: str) -> tuple[dict[str, list], dict[str, tuple[str, ...]]]:
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise NSAError(f"{source} line {_line(node)}: `axes:` must map each axis to a list of values, e.g. "
                       "`sparsity: [0.3, 0.5, 0.7]`; known axes: " + ", ".join(AXES))
    axes: dict[str, list] = {}
    paths: dict[str, tuple[str, ...]] = {}
    for key, (knode, vnode) in _mapping(node, source, "axes").items():
        path = axis_path(key)
        if path is None:
            raise NSAError(f"{source} line {_line(knode)}: unknown axis {key!r}; use one of "
                           f"{', '.join(AXES)} or a dotted spec path such as prune.options.<name>")
        name = AXIS_ALIASES.get(key, key)
        if path in paths.values():
            other = next(k for k, p in paths.items() if p == path)
            raise NSAError(f"{source} line {_line(knode)}: axis {key!r} sets the same field as {other!r}")
        values = _construct(vnode, source)
        if not isinstance(values, list):
            values = [values] if values is not None else []
        if not values:
            raise NSAError(f"{source} line {_line(knode)}: axis {key!r} has no values; give a list such as "
                           f"{key}: [a, b], or remove the axis")
        seen = []
        for v in values:
            if isinstance(v, (dict, list)) and path[-1] != "tasks":
                raise NSAError(f"{source} line {_line(vnode)}: axis {key!r} values must be plain values, got {v!r}")
            if v in seen:
                raise NSAError(f"{source} line {_line(vnode)}: axis {key!r} lists {v!r} twice")
            seen.append(v)
        axes[name] = values
        paths[name] = path
    return axes, paths


def _compose(text: str, source: str) -> yaml.Node | None:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            check_expansion(node, source, len(text))
        return node
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(x for x in (err.context, err.problem) if x)
        raise NSAError(f"{source}{where}: the study file does not parse as YAML: {reason}") from None
    except yaml.YAMLError as err:
        raise NSAError(f"{source}: the study file does not parse as YAML: {err}") from None


def _mapping(node: yaml.MappingNode, source: str, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Keys of a mapping node (in order) with their nodes; duplicated or non-string keys are errors."""
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for knode, vnode in node.value:
        key = _construct(knode, source)
        if not isinstance(key, str):
            raise NSAError(f"{source} line {_line(knode)}: keys in {what} must be names, got {key!r}")
        if key in out:
            raise NSAError(f"{source} line {_line(knode)}: key {key!r} appears twice in {what} "
                           f"(first on line {_line(out[key][0])})")
        out[key] = (knode, vnode)
        if isinstance(vnode, yaml.MappingNode):
            _mapping(vnode, source, key)
    return out


def _construct(node: yaml.Node, source: str) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        raise NSAError(f"{source} line {_line(node)}: {err.problem}") from None
    finally:
        loader.dispose()


def _scalar_str(node: yaml.Node, source: str, key: str) -> str:
    value = _construct(node, source)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise NSAError(f"{source} line {_line(node)}: `{key}:` must be text, got {value!r}")
    return str(value)


def _positive_int(node: yaml.Node, source: str) -> int:
    value = _construct(node, source)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NSAError(f"{source} line {_line(node)}: `max_runs:` must be a positive integer, got {value!r}")
    return value


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _kind(node: yaml.Node) -> str:
    return {yaml.ScalarNode: "a single value", yaml.SequenceNode: "a list", yaml.MappingNode: "a mapping"}[type(node)]
