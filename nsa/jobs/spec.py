"""Job specs: what one run computes, parsed from YAML or a dict, validated, normalised and hashed.

```yaml
model: demo                        # "demo", a local folder or a hub id
device: cpu                        # where the job runs (not part of the run id)
dtype: float32                     # float32 | float16 | bfloat16
prune: {method: wanda, sparsity: 0.5, pattern: unstructured, options: {}}
calibration: {source: demo-generic, nsamples: 32, seqlen: 128, seed: 0}   # optional `path:` for a file
evaluate: {tasks: [demo-reviews], limit: 200}                              # optional section
nsa: {task: demo-reviews, words: learned, limit: 100}                     # optional section
```

Unknown keys and bad values raise `NSAError` naming the key's path (`prune.sparsity: ...`). The run id is
the first 16 hex digits of the sha256 of the normalised spec (canonical JSON, without `device`) and, for the demo
and local folders, of the model files' content hash (`nsa.models.model_key`, cached per process by sizes and
modification times; about 10 s once for a 7B folder), so the same experiment asked twice —
from the CLI, the app or a study — is one run, and a model retrained in the same folder is a new one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nsa.errors import NSAError

DTYPES = ("float32", "float16", "bfloat16")
ID_LENGTH = 16
NOT_IN_ID = ("device",)  # where a job runs does not change what it computes


@dataclass(frozen=True)
class PruneSpec:
    method: str
    sparsity: float = 0.5
    pattern: str = "unstructured"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CalibrationSpec:
    source: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    path: str | None = None


@dataclass(frozen=True)
class EvaluateSpec:
    tasks: tuple = ()
    limit: int | None = None


@dataclass(frozen=True)
class NSASpec:
    task: str
    words: str = "learned"
    limit: int | None = None
    options: dict = field(default_factory=dict)  # every `nsa.attribution.NSA_OPTIONS` entry, defaults filled


@dataclass(frozen=True)
class JobSpec:
    """A normalised job: build with `parse_spec` (never by hand: it validates and normalises)."""

    model: str
    prune: PruneSpec
    calibration: CalibrationSpec | None = None
    evaluate: EvaluateSpec | None = None
    nsa: NSASpec | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict:
        """The normalised spec as plain JSON data (what `spec.json` holds and the app writes)."""
        out = asdict(self)
        if out["evaluate"] is not None:
            out["evaluate"]["tasks"] = list(out["evaluate"]["tasks"])
        return out

    @property
    def id(self) -> str:
        return spec_id(self.to_dict(), model_fingerprint(self.model))


def model_fingerprint(model: str) -> str | None:
    """The model files' content hash (`nsa.models.model_key`) for the demo and local folders, so a model
    retrained in the same folder makes new runs instead of showing the old ones. Hub ids are keyed by name
    (None): their cached snapshot is what runs."""
    from nsa.models import looks_local, model_key

    if model != "demo" and not looks_local(model):
        return None
    try:
        return model_key(model)
    except NSAError:
        return None  # a missing folder is reported when the job loads it


def spec_id(normalised: dict, model_files: str | None = None) -> str:
    """Hash of the normalised spec without the fields that do not change results (`NOT_IN_ID`), plus the
    model files' key when there is one."""
    keyed = {k: v for k, v in normalised.items() if k not in NOT_IN_ID}
    if model_files is not None:
        keyed["model_files"] = model_files
    text = json.dumps(keyed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


# --- parsing ------------------------------------------------------------------------------------------------
def load_spec(path: str | Path) -> JobSpec:
    """Parse a YAML (or JSON) spec file; a missing or unparsable file is an `NSAError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise NSAError(f"spec file not found: {path} (pass a YAML file such as examples/demo.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise NSAError(f"{path} is not valid YAML: {err}") from None
    try:
        return parse_spec(data)
    except NSAError as err:
        raise NSAError(f"{path}: {err}") from None


def parse_spec(data: Any) -> JobSpec:
    """Validate and normalise a spec mapping (a dict, e.g. from YAML or the app) into a `JobSpec`."""
    if isinstance(data, JobSpec):
        return data
    top = _mapping(data, "spec", {"model", "prune", "calibration", "evaluate", "nsa", "device", "dtype"})
    for required in ("model", "prune"):
        if top.get(required) is None:
            raise NSAError(f"{required}: missing (every spec needs `model:` and `prune:`)")
    model = _text(top["model"], "model")
    if Path(model).expanduser().exists() and model != "demo":
        model = str(Path(model).expanduser().resolve())
    prune = _prune(top["prune"])
    calibration = _calibration(top.get("calibration"), prune)
    evaluate = _evaluate(top.get("evaluate"))
    nsa = _nsa(top.get("nsa"))
    device = _text(top.get("device", "cpu"), "device")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:") or device == "mps"):
        raise NSAError(f"device: expected cpu, cuda, cuda:N or mps, got {device!r}")
    dtype = _choice(top.get("dtype", "float32"), "dtype", DTYPES)
    return JobSpec(model=model, prune=prune, calibration=calibration, evaluate=evaluate, nsa=nsa,
                   device=device, dtype=dtype)


def _prune(value: Any) -> PruneSpec:
    sec = _mapping(value, "prune", {"method", "sparsity", "pattern", "options"})
    if sec.get("method") is None:
        raise NSAError("prune.method: missing (e.g. magnitude, wanda, sparsegpt)")
    method = _text(sec["method"], "prune.method").lower()
    sparsity = _number(sec.get("sparsity", 0.5), "prune.sparsity")
    if not 0.0 <= sparsity < 1.0:
        raise NSAError(f"prune.sparsity: must be in [0, 1), got {sparsity}")
    pattern = _pattern(sec.get("pattern", "unstructured"))
    options = sec.get("options") or {}
    if not isinstance(options, dict):
        raise NSAError(f"prune.options: expected a mapping of method options, got {options!r}")
    options = _method_options(method, dict(options))
    return PruneSpec(method=method, sparsity=sparsity, pattern=pattern, options=options)


def _pattern(value: Any) -> str:
    text = _text(value, "prune.pattern").lower().replace(" ", "")
    if text == "unstructured":
        return text
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return f"{n}:{m}"
    raise NSAError(f"prune.pattern: expected 'unstructured' or 'N:M' with 0 < N < M (e.g. 2:4), got {value!r}")


def _method_options(method: str, options: dict) -> dict:
    """Check the method and its options against `pruners.registry` (defaults filled in, so the id is stable)."""
    entry = _registry_method(method)
    if entry is None:  # the engine's registry cannot be loaded here: keep the options as given
        return dict(sorted(options.items()))
    from pruners.errors import PruneError

    declared = {opt.name: opt for opt in entry.options}
    unknown = sorted(set(options) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise NSAError(f"prune.options.{unknown[0]}: unknown option for {method} (its options: {known})")
    out = {}
    for name, opt in sorted(declared.items()):
        if name not in options:
            out[name] = opt.default
            continue
        if isinstance(options[name], (dict, list)) or options[name] is None:
            raise NSAError(f"prune.options.{name}: expected a single value, got {options[name]!r}")
        try:
            out[name] = opt.validate(options[name])
        except PruneError as err:
            raise NSAError(f"prune.options.{name}: {err}") from None
    return out


def _registry_method(method: str):
    """The registry's entry for `method` (unknown → NSAError listing the methods); None without a registry."""
    try:
        from pruners import registry

        registry.list_methods()
    except ImportError:
        return None
    from pruners.errors import PruneError

    try:
        return registry.get_method(method)
    except PruneError as err:
        raise NSAError(f"prune.method: {err}") from None


def _calibration(value: Any, prune: PruneSpec) -> CalibrationSpec | None:
    if _needs_nothing(prune.method):
        return None  # magnitude pruning reads no data: calibration settings do not change the run
    sec = _mapping(value if value is not None else {}, "calibration",
                   {"source", "nsamples", "seqlen", "seed", "path"})
    path = sec.get("path")
    if path is not None:
        path = str(Path(_text(path, "calibration.path")).expanduser().resolve())
        if not Path(path).is_file():
            raise NSAError(f"calibration.path: file not found: {path}")
    source = _text(sec.get("source", "c4"), "calibration.source")
    if path is None:
        from nsa.calibration import list_calibration_sources

        known = list_calibration_sources()
        if source not in known:
            raise NSAError(f"calibration.source: unknown source {source!r}; known: {', '.join(known)} "
                           "(or give a file with calibration.path)")
    return CalibrationSpec(source=source,
                           nsamples=_positive(sec.get("nsamples", 128), "calibration.nsamples"),
                           seqlen=_positive(sec.get("seqlen", 2048), "calibration.seqlen"),
                           seed=_integer(sec.get("seed", 0), "calibration.seed"), path=path)


def _needs_nothing(method: str) -> bool:
    """True when the registry declares that `method` needs no calibration data (magnitude)."""
    try:
        entry = _registry_method(method)
    except NSAError:
        return False  # reported by the method check
    return method == "magnitude" if entry is None else not entry.needs


def _evaluate(value: Any) -> EvaluateSpec | None:
    if value is None:
        return None
    sec = _mapping(value, "evaluate", {"tasks", "limit"})
    tasks = sec.get("tasks")
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks:
        raise NSAError(f"evaluate.tasks: expected a non-empty list of task names, got {tasks!r}")
    names = [_text(t, f"evaluate.tasks[{i}]") for i, t in enumerate(tasks)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NSAError(f"evaluate.tasks: {dupes[0]} listed twice")
    for i, name in enumerate(names):
        _check_task(name, f"evaluate.tasks[{i}]")
    return EvaluateSpec(tasks=tuple(sorted(names)), limit=_limit(sec.get("limit"), "evaluate.limit"))


def _nsa(value: Any) -> NSASpec | None:
    if value is None:
        return None
    sec = _mapping(value, "nsa", {"task", "words", "limit", "options"})
    if sec.get("task") is None:
        raise NSAError("nsa.task: missing (the labelled classification task to attribute, e.g. demo-reviews)")
    task = _text(sec["task"], "nsa.task")
    _check_task(task, "nsa.task")
    words = _text(sec.get("words", "learned"), "nsa.words")
    if words not in ("learned", "gradient"):
        if not Path(words).expanduser().is_file():
            raise NSAError(f"nsa.words: expected learned, gradient or a word file, got {words!r} (no such file)")
        words = str(Path(words).expanduser().resolve())
    from nsa.attribution import check_nsa_options

    options = sec.get("options") or {}
    if not isinstance(options, dict):
        raise NSAError(f"nsa.options: expected a mapping of NSA options, got {options!r}")
    return NSASpec(task=task, words=words, limit=_limit(sec.get("limit"), "nsa.limit"),
                   options=check_nsa_options(options))


def _check_task(name: str, where: str) -> None:
    from nsa import datasets as D

    try:
        D.get_task(name)
    except NSAError as err:
        raise NSAError(f"{where}: {err}") from None


# --- small validators ---------------------------------------------------------------------------------------
def _mapping(value: Any, where: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise NSAError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
    for key in value:
        if key not in allowed:
            path = key if where == "spec" else f"{where}.{key}"
            raise NSAError(f"{path}: unknown key (allowed here: {', '.join(sorted(allowed))})")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NSAError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _choice(value: Any, where: str, choices: tuple) -> str:
    if value not in choices:
        raise NSAError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NSAError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NSAError(f"{where}: expected an integer, got {value!r}")
    return value


def _positive(value: Any, where: str) -> int:
    value = _integer(value, where)
    if value < 1:
        raise NSAError(f"{where}: must be a positive integer, got {value}")
    return value


def _limit(value: Any, where: str) -> int | None:
    return None if value is None else _positive(value, where)


def from_dict(data: dict) -> JobSpec:
    """Rebuild a `JobSpec` from its `to_dict()` form (spec.json, the store), re-validating it."""
    return parse_spec(data)
