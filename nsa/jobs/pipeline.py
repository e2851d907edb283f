"""One job's stages, in order, building its run folder (artifacts: `nsa.jobs.runs.RUN_ARTIFACTS`).

load model → calibration → dense eval → NSA dense part → prune (in place) → neurons table → pruned eval →
comparison → NSA pruned part. Everything that needs the dense model runs before pruning, and everything that
needs the pruned model after it, so one model is loaded once and never copied. Each task is evaluated once per
example set (`JobSpec.eval_sets`); NSA reads those same records (dense from the shared, verified dense-eval
cache entries; pruned from this run) and its dense statistics come from a shared cache entry too.

The folder is built in a hidden temporary sibling and swapped into place after its manifest is written, so a
reader never sees half a run. Each stage has a key: the digest of the parts of the spec and of the local inputs
its results depend on (`stage_keys`), recorded in the manifest. A stage is not recomputed when a verified copy
of its artifacts exists under the same key — in an earlier folder of this run whose other artifacts were
damaged, or in another run (adding NSA or a seed to an experiment reuses its calibration, pruning and
evaluations); only the rest is computed. Progress: `pruners.ProgressEvent(fraction of the whole job, message, stage)`.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from nsa import attribution as A
from nsa.artifacts import Entry, digest
from nsa.atomic import atomic_path, write_json
from nsa.calibration import build_calibration
from nsa.datasets import prompted
from nsa.evaluation import (
    compare,
    dense_evaluation,
    load_records,
    run_evaluation,
    write_outputs,
)
from nsa.jobs.runs import RUN_FORMAT, artifacts_of, run_entry
from nsa.jobs.spec import JobSpec, inputs_key, parse_spec
from nsa.masks import apply_masks, load_masks, load_weights
from nsa.models import load_model, model_key
from nsa.neurons import pruned_fractions
from nsa.progress import Report, Stages
from pruners import ProgressEvent, prune
from pruners.io import save_result

LOAD_WEIGHT = 0.05


@dataclass
class Context:
    """What the stages share while building one run folder."""

    spec: JobSpec
    out: Path  # the temporary run folder
    sources: dict[str, Entry]  # stage name -> the run folder whose verified artifacts it copies
    log: logging.Logger
    model: Any = None
    tokenizer: Any = None
    model_key: str = ""
    tasks: dict = field(default_factory=dict)  # task name -> the TaskSpec as this run asks it (prompt setting)
    calibration: Any = None
    pruned: bool = False  # `model` holds the pruned weights
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    weight: float  # share of the job's time (for the overall fraction)
    needs: tuple[str, ...]  # stages whose results it reads
    run: Callable[[Context, Report], None]
    when: Callable[[JobSpec], bool] = lambda spec: True
    uses_model: bool = True  # needs the model in memory (neurons and comparison read files only)

    @property
    def outputs(self) -> tuple[str, ...]:
        return artifacts_of(self.name)


# --- the stages -----------------------------------------------------------------------------------------
def _load_model(ctx: Context, report: Report) -> None:
    report(0.0, f"loading {ctx.spec.model}")
    ctx.model, ctx.tokenizer = load_model(ctx.spec.model, device=ctx.spec.device, dtype=ctx.spec.dtype,
                                          progress=report)
    ctx.model_key = model_key(ctx.spec.model)
    ctx.tasks = {name: prompted(name, ctx.spec.prompt, ctx.tokenizer, limit)
                 for name, limit in ctx.spec.eval_sets().items()}
    report(1.0, f"loaded {type(ctx.model).__name__}")


def _calibration(ctx: Context, report: Report) -> None:
    c = ctx.spec.calibration
    ctx.calibration = build_calibration(c.source, ctx.tokenizer, c.nsamples, c.seqlen, seed=c.seed, path=c.path,
                                        progress=report)
    write_json(ctx.out / "calibration.json", ctx.calibration.summary())


def _by_limit(ctx: Context) -> dict[int | None, list]:
    """The run's example sets grouped by limit: {limit: [TaskSpec as this run asks it, ...]}."""
    groups: dict[int | None, list] = {}
    for task, limit in ctx.spec.eval_sets().items():
        groups.setdefault(limit, []).append(ctx.tasks[task])
    return groups


def _dense_eval(ctx: Context, report: Report) -> None:
    groups = _by_limit(ctx)
    merged: dict[str, Any] = {"tasks": {}, "model_id": ctx.spec.model, "model_key": ctx.model_key, "reused": []}
    out = ctx.out / "eval" / "dense"
    for k, (limit, tasks) in enumerate(groups.items()):
        part = dense_evaluation(ctx.spec.model, tasks, limit=limit, out_dir=out, key=ctx.model_key,
                                progress=report.part(k / len(groups), (k + 1) / len(groups)),
                                model=ctx.model, tokenizer=ctx.tokenizer, log=ctx.log.warning)
        merged["tasks"] |= part["tasks"]
        merged["reused"] += part["reused"]
        merged.update({f: part.get(f) for f in ("model", "batch_size", "versions", "format")})
    write_json(out / "summary.json", merged)


def _pruned_eval(ctx: Context, report: Report) -> None:
    _ensure_pruned(ctx)
    groups = _by_limit(ctx)
    summary: dict[str, Any] = {"tasks": {}, "timing": {}}
    records: dict[str, list[dict]] = {}
    for k, (limit, tasks) in enumerate(groups.items()):
        part, recs = run_evaluation(ctx.model, ctx.tokenizer, tasks, limit=limit,
                                    progress=report.part(k / len(groups), (k + 1) / len(groups)))
        summary["tasks"] |= part["tasks"]
        summary.update({f: part[f] for f in ("model", "batch_size", "versions", "format", "created")})
        summary["timing"][f"limit {limit}"] = part["timing"]
        records |= recs
    write_outputs(ctx.out / "eval" / "pruned", summary, records)


def _comparison(ctx: Context, report: Report) -> None:
    result = compare(ctx.out / "eval" / "dense", ctx.out / "eval" / "pruned")
    result.update(dense_dir="eval/dense", pruned_dir="eval/pruned")  # relative: the folder is renamed
    write_json(ctx.out / "eval" / "comparison.json", result)
    report(1.0, "comparison written")


def _nsa_dense(ctx: Context, report: Report) -> None:
    """The dense part of NSA, on the still-dense model: word selection, running sums, validation (cached)."""
    stages = Stages(report)
    config = ctx.spec.nsa
    inputs = A.prepare(ctx.model, ctx.tokenizer, config, ctx.model_key, stages, ctx.tasks[config.task])
    records = load_records(ctx.out / "eval" / "dense", config.task)
    ctx.extra["nsa"] = (inputs, A.dense_part(ctx.model, ctx.tokenizer, inputs, records, ctx.model_key, stages))


def _prune(ctx: Context, report: Report) -> None:
    calib_ids = ctx.calibration.input_ids if ctx.calibration is not None else None
    result = prune(ctx.model, calib_ids, ctx.spec.prune, progress=report, device=ctx.spec.device)
    ctx.pruned = True
    save_result(result, ctx.out, save_weights=result.weights is not None)
    ctx.extra["masks"] = result.masks


def _neurons(ctx: Context, report: Report) -> None:
    rows = pruned_fractions(_masks(ctx))
    with atomic_path(ctx.out / "neurons.parquet") as tmp:
        pd.DataFrame(rows, columns=["layer", "index", "frac_in", "frac_out", "removed"]).to_parquet(tmp, index=False)
    report(1.0, f"{len(rows)} neurons")


def _nsa(ctx: Context, report: Report) -> None:
    """The pruned part of NSA on the pruned model, with the evaluation's records of the task's example set."""
    _ensure_pruned(ctx)
    inputs, dense = ctx.extra["nsa"]
    task = ctx.spec.nsa.task
    dense_records = load_records(ctx.out / "eval" / "dense", task)
    pruned_records = load_records(ctx.out / "eval" / "pruned", task)
    pruned = A.pruned_part(ctx.model, inputs, dense, dense_records, pruned_records, _masks(ctx), Stages(report))
    summary = A.summary_of(inputs, dense, ctx.spec.model, ctx.model_key, pruned)
    write_outputs(ctx.out / "nsa", summary, A.tables_of(inputs, dense, pruned))


def _has_eval(spec: JobSpec) -> bool:
    return bool(spec.eval_sets())


STAGES: list[Stage] = [
    Stage("calibration", 0.05, (), _calibration, lambda s: s.calibration is not None),
    Stage("dense eval", 0.10, (), _dense_eval, _has_eval),
    Stage("nsa dense", 0.25, ("dense eval",), _nsa_dense, lambda s: s.nsa is not None),
    Stage("prune", 0.30, ("calibration",), _prune),
    Stage("neurons", 0.02, ("prune",), _neurons, uses_model=False),
    Stage("pruned eval", 0.12, ("prune",), _pruned_eval, _has_eval),
    Stage("comparison", 0.01, ("dense eval", "pruned eval"), _comparison, _has_eval, uses_model=False),
    Stage("nsa", 0.15, ("nsa dense", "prune", "pruned eval"), _nsa, lambda s: s.nsa is not None),
]


# --- helpers --------------------------------------------------------------------------------------------
def _masks(ctx: Context) -> dict:
    if "masks" not in ctx.extra:
        ctx.extra["masks"] = load_masks(ctx.out / "masks.safetensors")
    return ctx.extra["masks"]


def _ensure_pruned(ctx: Context) -> None:
    """Make the in-memory model the pruned one (after a reused prune stage)."""
    if ctx.pruned:
        return
    weights = ctx.out / "weights.safetensors"
    apply_masks(ctx.model, _masks(ctx), load_weights(weights if weights.is_file() else None))
    ctx.pruned = True


def _stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def stages_for(spec: JobSpec) -> list[Stage]:
    return [s for s in STAGES if s.when(spec)]


def _files_of(stage: Stage, files: dict) -> list[str]:
    return [rel for rel in files if any(rel == o or (o.endswith("/") and rel.startswith(o)) for o in stage.outputs)]


def stage_keys(spec: JobSpec) -> dict[str, str]:
    """Per stage, the digest of what its results depend on (spec parts and local inputs' content)."""
    inputs = inputs_key(spec)
    model = {"model": spec.model, "dtype": spec.dtype, "model_files": inputs["model"]}
    calibration = model | {"calibration": spec.to_dict()["calibration"], "file": inputs.get("calibration")}
    pruned = calibration | {"prune": spec.prune.to_dict()}
    sets = {"sets": spec.eval_sets(), "prompt": spec.prompt.to_dict(), "data": inputs["data"]}
    if "custom_tasks" in inputs:  # a custom task's labels and prompt (absent otherwise: other keys stay as they were)
        sets["custom_tasks"] = inputs["custom_tasks"]
    nsa = None if spec.nsa is None else {"nsa": spec.nsa.to_dict(), "words": inputs.get("words")}
    parts = {"calibration": calibration, "dense eval": model | sets, "prune": pruned, "neurons": pruned,
             "pruned eval": pruned | sets, "comparison": pruned | sets, "nsa dense": model | sets | {"nsa": nsa},
             "nsa": pruned | sets | {"nsa": nsa}}
    return {name: digest([name, RUN_FORMAT, value]) for name, value in parts.items()}


def plan_reuse(spec: JobSpec, old: Entry) -> dict[str, Entry]:
    """{stage: the run folder it is copied from}: stages with a verified copy under the same stage key (this run's
    earlier folder first, then any other run) whose inputs are reused too (so they are still valid)."""
    keys = stage_keys(spec)
    donors = _donors(keys, old)
    sources: dict[str, Entry] = {}
    active = stages_for(spec)
    names = {s.name for s in active}
    for stage in active:
        # a dependency that writes nothing into the folder (NSA's dense part, a shared cache entry) is rebuilt
        # cheaply when a later stage needs it: it never forces its dependants to run again
        if not all(d in sources or d not in names or not _stage(d).outputs for d in stage.needs):
            continue
        for entry in donors:
            files = _files_of(stage, entry.manifest()["files"])
            recorded = ((entry.manifest().get("meta") or {}).get("stage_keys") or {}).get(stage.name)
            if files and recorded in (keys[stage.name], None if entry == old else "") and \
                    all(entry.file_problem(f) is None for f in files):
                sources[stage.name] = entry
                break
    if "prune" not in sources:
        sources.pop("calibration", None)  # pruning again needs the calibration set in memory
    if "nsa" in sources or "nsa" not in names:
        sources["nsa dense"] = old  # only the pruned part needs the dense part's results in memory
    return {k: v for k, v in sources.items() if k in names}


def _donors(keys: dict[str, str], old: Entry) -> list[Entry]:
    """This run's earlier folder (a folder written before stage keys existed counts as matching), then every
    other run folder that records one of these stage keys."""
    out = [old] if old.manifest() is not None else []
    root = old.folder.parent
    wanted = set(keys.values())
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder == old.folder or folder.name.startswith(".") or not folder.is_dir():
            continue
        entry = Entry(folder, old.kind, old.format)
        recorded = ((entry.manifest() or {}).get("meta") or {}).get("stage_keys") or {}
        if wanted & set(recorded.values()):
            out.append(entry)
    return out


class _Progress:
    """Each stage's `Report` maps into the job's overall fraction. The log gets stage changes and progress
    messages, at most one every `LOG_EVERY_S` seconds unless the kind of message (its text without digits) changes."""

    LOG_EVERY_S = 2.0

    def __init__(self, progress: Callable | None, log: logging.Logger):
        self.progress, self.log = progress, log
        self.logged, self.kind = 0.0, ""

    def enter(self, stage: str, base: float, weight: float) -> Report:
        self.log.info("stage %s", stage)
        report = Report(self._emit, base, base + weight, stage)
        report(0.0, "")
        return report

    def _emit(self, event: ProgressEvent) -> None:
        kind = "".join(c for c in event.message if not c.isdigit())[:40]
        now = time.time()
        if event.message and (kind != self.kind or now - self.logged >= self.LOG_EVERY_S):
            self.log.info("%s %.0f%% %s", event.stage, 100 * event.fraction, event.message)
            self.logged, self.kind = now, kind
        if self.progress is not None:
            self.progress(event)


# --- the job --------------------------------------------------------------------------------------------
def run_job(spec: JobSpec | dict, progress: Callable[[ProgressEvent], None] | None = None,
            run_id: str | None = None) -> Path:
    """Run every stage of `spec` (a `JobSpec`, or a mapping, which is parsed) and return the complete run
    folder. `run_id`: the queued job's id (its folder name; by default the spec's id now: they differ only when
    an input changed after the job was queued, and the job's folder must still be the one it announced). A run
    folder that already verifies is returned at once (nothing is recomputed)."""
    spec = parse_spec(spec)
    entry = run_entry(run_id or spec.id)
    if entry.complete():
        if progress is not None:
            progress(ProgressEvent(1.0, "already computed", "done"))
        return entry.folder
    entry.clean_partial()
    sources = plan_reuse(spec, entry)
    started = time.time()
    with entry.build(meta={"stage_keys": stage_keys(spec)}) as out:
        log, handler = _job_logger(entry.key, out)
        try:
            ctx = Context(spec=spec, out=out, sources=sources, log=log)
            _run_stages(ctx, _Progress(progress, log))
            write_json(out / "spec.json", spec.to_dict())
            reused = ", ".join(f"{name} (from {'this run' if src == entry else 'run ' + src.key})"
                               for name, src in sources.items() if name != "nsa dense")
            log.info("finished in %.1f s (reused: %s)", time.time() - started, reused or "none")
        except BaseException:
            log.exception("job failed")
            raise
        finally:
            handler.close()
            log.removeHandler(handler)
    if progress is not None:
        progress(ProgressEvent(1.0, f"run {entry.key} complete", "done"))
    return entry.folder


def _run_stages(ctx: Context, progress: _Progress) -> None:
    stages = stages_for(ctx.spec)
    to_run = [s for s in stages if s.name not in ctx.sources]
    load = any(s.uses_model for s in to_run)
    total = (LOAD_WEIGHT if load else 0.0) + sum(s.weight for s in to_run) or 1.0
    for stage in stages:
        if stage.name in ctx.sources and stage.outputs:
            source = ctx.sources[stage.name]
            _copy_outputs(ctx, stage, source)
            ctx.log.info("stage %s reused from %s", stage.name, source.folder)
    base = 0.0
    if load:
        _load_model(ctx, progress.enter("load model", 0.0, LOAD_WEIGHT / total))
        base = LOAD_WEIGHT / total
    for stage in to_run:
        report = progress.enter(stage.name, base, stage.weight / total)
        stage.run(ctx, report)
        report(1.0, f"{stage.name} done")
        base += stage.weight / total


def _copy_outputs(ctx: Context, stage: Stage, source: Entry) -> None:
    manifest = source.manifest() or {"files": {}}
    for rel in _files_of(stage, manifest["files"]):
        target = ctx.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.path(rel), target)


def _job_logger(run_id: str, out: Path) -> tuple[logging.Logger, logging.Handler]:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"nsa.jobs.run.{run_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(out / "logs" / "job.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler
