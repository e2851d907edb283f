"""Job specs: what one run computes. Parsed from YAML or a mapping, validated once, normalised and hashed.

```yaml
model: demo                        # "demo", a local folder, a .gguf file, or a hub id
device: cpu                        # where the job runs (not part of the run id)
dtype: float32                     # float32 | float16 | bfloat16
prune: {method: wanda, sparsity: 0.5, pattern: unstructured, options: {}}       # a pruners.PruneConfig
                                   # (+ sparsity_profile: owl, profile_options: {owl_m: 5, owl_lambda: 0.08})
calibration: {source: demo-generic, nsamples: 32, seqlen: 128, seed: 0}   # optional `path:` for a file
evaluate: {tasks: [demo-reviews], limit: 200}                              # optional section
nsa: {task: demo-reviews, words: learned, options: {}}                    # optional: an nsa.attribution.NSAConfig
prompt: {template: review, chat: false, num_fewshot: 4, fewshot_seed: 0}   # optional: how classification tasks
                                                                           # are asked (nsa.datasets.PromptConfig)
```

The `prune:` section is a `pruners.PruneConfig` and `nsa:` an `NSAConfig`, each validated where it is defined;
this module only names the section in the message (`prune.sparsity: must be in [0, 1) ...`). NSA evaluates its
task on the same example set as `evaluate:` (one evaluation per task and example set per run), so `nsa.limit`
is the evaluation's limit when the task is evaluated too.

The run id is the first 16 hex digits of the digest of the normalised spec (without `device`) and of the
content of every local input: the model's files, local data files of the tasks (and how a custom task reads
its file: labels, fields, prompt), a word list, a calibration file (`inputs_key`). The same experiment asked
twice — from the CLI, the app or a study — is one run, and an edited input is a new one. A spec read back
from the store or a run folder is trusted (`JobSpec.stored`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from nsa import datasets as D
from nsa.artifacts import digest, sha256_file
from nsa.attribution import NSAConfig
from nsa.calibration import check_size as check_calibration_size
from nsa.calibration import list_calibration_sources, source_file
from nsa.errors import NSAError
from nsa.models import check_model_name, local_model_key
from nsa.userfiles import read_text, safe_yaml
from pruners import PruneConfig, PruneError

DTYPES = ("float32", "float16", "bfloat16")
ID_LENGTH = 16
NOT_IN_ID = ("device",)  # where a job runs does not change what it computes
DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
MAX_SPEC_BYTES = 1 << 20


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
class JobSpec:
    """A normalised job: build it with `parse_spec` (validates) or `JobSpec.stored` (trusted read-back)."""

    model: str
    prune: PruneConfig
    calibration: CalibrationSpec | None = None
    evaluate: EvaluateSpec | None = None
    nsa: NSAConfig | None = None
    device: str = "cpu"
    dtype: str = "float32"
    prompt: D.PromptConfig = D.PromptConfig()

    def to_dict(self) -> dict:
        """The normalised spec as plain JSON data (what `spec.json` and the store hold). The reference prompt
        setting is left out, so specs written before prompt settings existed keep their run ids."""
        out = {"model": self.model, "prune": self.prune.to_dict(),
               "calibration": None if self.calibration is None else _plain(self.calibration),
               "evaluate": None if self.evaluate is None else {"tasks": list(self.evaluate.tasks),
                                                                "limit": self.evaluate.limit},
               "nsa": None if self.nsa is None else self.nsa.to_dict(),
               "device": self.device, "dtype": self.dtype}
        if not self.prompt.is_reference:
            out["prompt"] = self.prompt.to_dict()
        return out

    @cached_property
    def id(self) -> str:
        keyed = {k: v for k, v in self.to_dict().items() if k not in NOT_IN_ID}
        return digest([keyed, inputs_key(self)], ID_LENGTH)

    def eval_sets(self) -> dict[str, int | None]:
        """{task: limit}: the example sets this run evaluates (NSA's task included, on its own set)."""
        out = {t: self.evaluate.limit for t in self.evaluate.tasks} if self.evaluate else {}
        if self.nsa is not None and self.nsa.task not in out:
            out[self.nsa.task] = self.nsa.limit
        return out

    def local_paths(self) -> list[tuple[str, Path]]:
        """(field, path) of every local file or folder the spec names: what the app's allowed-folders check sees."""
        out = []
        if self.model != "demo" and Path(self.model).is_absolute():
            out.append(("model", Path(self.model)))
        if self.calibration is not None and self.calibration.path:
            out.append(("calibration.path", Path(self.calibration.path)))
        if self.nsa is not None and self.nsa.words not in ("learned", "gradient"):
            out.append(("nsa.words", Path(self.nsa.words)))
        for task in self.eval_sets():
            spec = D.get_task(task)
            if spec.group == "custom" and spec.path:
                out.append((f"task {task}", Path(spec.path)))
        return out

    @classmethod
    def stored(cls, data: dict) -> "JobSpec":
        """A spec this project wrote itself (store row, spec.json): rebuilt without re-checking files or tasks."""
        cal, ev, nsa = data.get("calibration"), data.get("evaluate"), data.get("nsa")
        return cls(model=data["model"], prune=PruneConfig.from_dict(data["prune"]),
                   calibration=None if cal is None else CalibrationSpec(**cal),
                   evaluate=None if ev is None else EvaluateSpec(tuple(ev["tasks"]), ev.get("limit")),
                   nsa=None if nsa is None else NSAConfig.stored(nsa),
                   device=data.get("device", "cpu"), dtype=data.get("dtype", "float32"),
                   prompt=D.PromptConfig.from_dict(data.get("prompt")))


def inputs_key(spec: JobSpec) -> dict:
    """Content hashes of the spec's local inputs (hub ids are keyed by name: their cached snapshot runs)."""
    out: dict[str, Any] = {"model": local_model_key(spec.model)}
    data = {name: _file_hash(D.data_file(name)) for name in spec.eval_sets()}
    out["data"] = {k: v for k, v in data.items() if v is not None}
    custom = [D.get_task(name) for name in spec.eval_sets() if D.get_task(name).group == "custom"]
    if custom:  # re-registered under the same name with other labels or prompt, the same file computes another run
        out["custom_tasks"] = {t.name: {"label_names": list(t.label_names), "fields": [list(f) for f in t.field_map],
                                        "prompt": t.prompt} for t in custom}
    if spec.nsa is not None and spec.nsa.words not in ("learned", "gradient"):
        out["words"] = _file_hash(Path(spec.nsa.words))
    if spec.calibration is not None:
        out["calibration"] = _file_hash(Path(spec.calibration.path) if spec.calibration.path
                                        else source_file(spec.calibration.source))
    return out


def _file_hash(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None and path.is_file() else None


# --- parsing ------------------------------------------------------------------------------------------------
def load_spec(path: str | Path) -> JobSpec:
    """Parse a YAML (or JSON) spec file; a missing or unparsable file is an `NSAError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise NSAError(f"spec file not found: {path} (pass a YAML file such as examples/demo.yaml)")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise NSAError(f"{path} is {path.stat().st_size} bytes: a job spec is a few lines of YAML")
    text = read_text(path, "spec file")
    try:
        return parse_spec(safe_yaml(text, str(path)))
    except NSAError as err:
        raise NSAError(f"{path}: {err}") from None


def parse_spec(data: Any) -> JobSpec:
    """Validate and normalise a spec mapping (from YAML, the app or a study) into a `JobSpec`."""
    if isinstance(data, JobSpec):
        return data
    top = _mapping(data, "spec", {"model", "prune", "calibration", "evaluate", "nsa", "device", "dtype", "prompt"})
    for required in ("model", "prune"):
        if top.get(required) is None:
            raise NSAError(f"{required}: missing (every spec needs `model:` and `prune:`)")
    model = check_model_name(_text(top["model"], "model"))
    prune = _section(lambda: PruneConfig.from_dict(top["prune"]), "prune")
    calibration = _calibration(top.get("calibration")) if _needs_calibration(prune) else None
    evaluate = _evaluate(top.get("evaluate"))
    nsa = None if top.get("nsa") is None else _section(lambda: NSAConfig.from_dict(top["nsa"]), "nsa")
    if nsa is not None and evaluate is not None and nsa.task in evaluate.tasks:
        nsa = _same_examples(nsa, evaluate, "limit" in top["nsa"])
    device = _text(top.get("device", "cpu"), "device")
    if not DEVICE_RE.match(device):
        raise NSAError(f"device: expected cpu, cuda, cuda:N or mps, got {_cap(repr(device))}")
    dtype = _choice(top.get("dtype", "float32"), "dtype", DTYPES)
    prompt = _section(lambda: D.PromptConfig.from_dict(top.get("prompt")), "prompt")
    spec = JobSpec(model=model, prune=prune, calibration=calibration, evaluate=evaluate, nsa=nsa, device=device,
                   dtype=dtype, prompt=prompt)
    _section(lambda: prompt.check([D.get_task(task) for task in spec.eval_sets()]), "prompt")
    for task, limit in spec.eval_sets().items():
        _section(lambda: D.check_shots(D.get_task(task), prompt, limit), "prompt")
    return spec


def _section(build, name: str):
    """Build a section's config object, naming the section in its error."""
    try:
        return build()
    except PruneError as err:
        raise NSAError(err.at(f"{name}.{err.field}" if err.field else name)) from None
    except NSAError as err:
        raise NSAError(err.at(f"{name}.{err.field}" if err.field else name)) from None


def _same_examples(nsa: NSAConfig, evaluate: EvaluateSpec, limit_given: bool) -> NSAConfig:
    """NSA reads the evaluation's records of its task: one example set per task, so one limit."""
    if limit_given and nsa.limit != evaluate.limit:
        raise NSAError(f"nsa.limit: {nsa.limit} differs from evaluate.limit {evaluate.limit} for task "
                       f"{nsa.task}: one run evaluates a task on one example set, shared by NSA; drop nsa.limit "
                       "or set both to the same value")
    return nsa.with_limit(evaluate.limit)


def _needs_calibration(prune: PruneConfig) -> bool:
    """Magnitude pruning reads no data (unless its sparsity profile does): calibration settings do not change
    its runs."""
    return prune.needs_calibration


def _calibration(value: Any) -> CalibrationSpec:
    sec = _mapping(value if value is not None else {}, "calibration", {"source", "nsamples", "seqlen", "seed", "path"})
    path = sec.get("path")
    if path is not None:
        path = str(Path(_text(path, "calibration.path")).expanduser().resolve())
        if not Path(path).is_file():
            raise NSAError(f"calibration.path: file not found: {path}")
    source = _text(sec.get("source", "c4"), "calibration.source")
    if path is None and source not in list_calibration_sources():
        raise NSAError(f"calibration.source: unknown source {source!r}; known: "
                       f"{', '.join(list_calibration_sources())} (or give a file with calibration.path)")
    calibration = CalibrationSpec(source=source,
                                  nsamples=_positive(sec.get("nsamples", 128), "calibration.nsamples"),
                                  seqlen=_positive(sec.get("seqlen", 2048), "calibration.seqlen"),
                                  seed=_seed(sec.get("seed", 0), "calibration.seed"), path=path)
    _section(lambda: check_calibration_size(calibration.nsamples, calibration.seqlen), "calibration")
    return calibration


def _evaluate(value: Any) -> EvaluateSpec | None:
    if value is None:
        return None
    sec = _mapping(value, "evaluate", {"tasks", "limit"})
    tasks = sec.get("tasks")
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks:
        raise NSAError(f"evaluate.tasks: expected a non-empty list of task names, got {_cap(repr(tasks))}")
    names = [_text(t, f"evaluate.tasks[{i}]") for i, t in enumerate(tasks)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise NSAError(f"evaluate.tasks: {dupes[0]} listed twice")
    for i, name in enumerate(names):
        try:
            D.get_task(name)
        except NSAError as err:
            raise NSAError(f"evaluate.tasks[{i}]: {err}") from None
    return EvaluateSpec(tasks=tuple(sorted(names)), limit=_limit(sec.get("limit"), "evaluate.limit"))


# --- small validators ---------------------------------------------------------------------------------------
def _cap(text: str, limit: int = 120) -> str:
    """An error never quotes a huge value whole."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _plain(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _mapping(value: Any, where: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise NSAError(f"{where}: expected a mapping, got {type(value).__name__} {_cap(repr(value))}")
    for key in value:
        if key not in allowed:
            path = key if where == "spec" else f"{where}.{key}"
            raise NSAError(f"{_cap(str(path))}: unknown key (allowed here: {', '.join(sorted(allowed))})")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NSAError(f"{where}: expected a non-empty string, got {_cap(repr(value))}")
    return value.strip()


def _choice(value: Any, where: str, choices: tuple) -> str:
    if value not in choices:
        raise NSAError(f"{where}: expected one of {', '.join(choices)}, got {_cap(repr(value))}")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise NSAError(f"{where}: expected an integer, got {_cap(repr(value))}")
    return value


def _positive(value: Any, where: str) -> int:
    value = _integer(value, where)
    if value < 1:
        raise NSAError(f"{where}: must be a positive integer, got {value}")
    return value


def _seed(value: Any, where: str) -> int:
    value = _integer(value, where)
    if not 0 <= value < 2**32:
        raise NSAError(f"{where}: must be in [0, 2^32) (Python's and numpy's seed range), got {_cap(str(value))}")
    return value


def _limit(value: Any, where: str) -> int | None:
    return None if value is None else _positive(value, where)
