"""One job's stages, in order, building its run folder (layout: ARCHITECTURE.md "Run folder").

load model → calibration → dense eval (cached per model under `cache/dense/`) → prune → neurons table →
pruned eval → comparison → NSA. The dense evaluation runs before pruning because pruning works in place:
the dense model is then still in memory, so it is never loaded twice for it (NSA, which needs the dense
model beside the masks, reloads it after pruning).

The folder is built in a hidden temporary sibling and renamed into place after `manifest.json` is written,
so a reader never sees half a run. When an earlier run folder exists but some artifacts fail their
checksums, every stage whose artifacts (and whose inputs) still verify is reused (copied), and only the
rest is recomputed. Progress goes to `progress(JobProgress)` at least once per layer or batch (the stage
functions report at that grain) with the overall fraction.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nsa.atomic import atomic_dir, atomic_path, write_json
from nsa.errors import NSAError
from nsa.jobs import runs
from nsa.jobs.spec import JobSpec, parse_spec


@dataclass
class JobProgress:
    """What the pipeline reports: the stage, its own fraction, the job's overall fraction and a message."""

    stage: str
    stage_fraction: float
    fraction: float
    message: str = ""


@dataclass
class Context:
    """What the stages share while building one run folder."""

    spec: JobSpec
    out: Path  # the temporary run folder
    old: Path  # the previous run folder (may not exist)
    reusable: set[str]  # stage names whose artifacts are copied from `old`
    log: logging.Logger
    model: Any = None
    tokenizer: Any = None
    calibration: Any = None
    pruned: bool = False  # `model` holds the pruned weights
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    weight: float  # share of the job's time (for the overall fraction)
    outputs: tuple[str, ...]  # files or folder prefixes (ending in "/") it writes
    needs: tuple[str, ...]  # stages whose artifacts it reads
    run: Callable[[Context, Callable], None]
    when: Callable[[JobSpec], bool] = lambda spec: True
    uses_model: bool = True  # needs the model in memory (neurons and comparison read files only)


# --- the stages -----------------------------------------------------------------------------------------
def _load_model(ctx: Context, report: Callable) -> None:
    from nsa.models import load_model

    report(0.0, f"loading {ctx.spec.model}")
    ctx.model, ctx.tokenizer = load_model(ctx.spec.model, device=ctx.spec.device, dtype=ctx.spec.dtype)
    ctx.model.eval()
    report(1.0, f"loaded {type(ctx.model).__name__}")


def _calibration(ctx: Context, report: Callable) -> None:
    from nsa.calibration import build_calibration

    c = ctx.spec.calibration
    ctx.calibration = build_calibration(c.source, ctx.tokenizer, c.nsamples, c.seqlen, seed=c.seed, path=c.path,
                                        progress=report)
    write_json(ctx.out / "calibration.json", ctx.calibration.summary())


def _dense_eval(ctx: Context, report: Callable) -> None:
    from nsa.evaluation import dense_evaluation

    e = ctx.spec.evaluate
    if ctx.pruned:  # the in-memory model is pruned: let the cache load a dense one when it must
        model = tokenizer = None
    else:
        model, tokenizer = ctx.model, ctx.tokenizer
    dense_evaluation(ctx.spec.model, list(e.tasks), limit=e.limit, out_dir=ctx.out / "eval" / "dense",
                     progress=report, device=ctx.spec.device, dtype=ctx.spec.dtype, model=model, tokenizer=tokenizer)


def _prune(ctx: Context, report: Callable) -> None:
    from pruners.io import save_result

    try:
        from pruners import PruneConfig, prune
    except ImportError:  # the package does not re-export them (yet): same objects, from their modules
        from pruners.config import PruneConfig
        from pruners.engine import prune

    p, c = ctx.spec.prune, ctx.spec.calibration
    config = PruneConfig(method=p.method, sparsity=p.sparsity, pattern=p.pattern, options=dict(p.options),
                                 seed=c.seed if c else 0, device=ctx.spec.device)
    calib_ids = ctx.calibration.input_ids if ctx.calibration is not None else None
    result = prune(ctx.model, calib_ids, config, progress=report)
    ctx.pruned = True
    save_result(result, ctx.out, save_weights=result.weights is not None)


def _neurons(ctx: Context, report: Callable) -> None:
    import pandas as pd
    from nsa.neurons import pruned_fractions

    rows = pruned_fractions(_masks(ctx))
    with atomic_path(ctx.out / "neurons.parquet") as tmp:
        pd.DataFrame(rows, columns=["layer", "index", "frac_in", "frac_out"]).to_parquet(tmp, index=False)
    report(1.0, f"{len(rows)} neurons")


def _pruned_eval(ctx: Context, report: Callable) -> None:
    from nsa.evaluation import evaluate

    _ensure_pruned(ctx)
    e = ctx.spec.evaluate
    evaluate(ctx.model, ctx.tokenizer, list(e.tasks), limit=e.limit, out_dir=ctx.out / "eval" / "pruned",
             progress=report)


def _comparison(ctx: Context, report: Callable) -> None:
    from nsa.evaluation import compare

    result = compare(ctx.out / "eval" / "dense", ctx.out / "eval" / "pruned")
    result.update(dense_dir="eval/dense", pruned_dir="eval/pruned")  # relative: the folder is renamed
    write_json(ctx.out / "eval" / "comparison.json", result)
    report(1.0, "comparison written")


def _nsa(ctx: Context, report: Callable) -> None:
    from nsa.attribution import attribute, attribution_config
    from nsa.models import load_model

    n = ctx.spec.nsa
    if ctx.pruned or ctx.model is None:  # NSA compares the dense model with its masks: start from dense weights
        ctx.model = None
        report(0.0, "reloading the dense model for NSA")
        ctx.model, ctx.tokenizer = load_model(ctx.spec.model, device=ctx.spec.device, dtype=ctx.spec.dtype)
        ctx.model.eval()
        ctx.pruned = False
    weights = ctx.out / "weights.safetensors"
    attribute(ctx.model, ctx.tokenizer, n.task, masks=ctx.out / "masks.safetensors",
              weights=weights if weights.is_file() else None, words=n.words, limit=n.limit,
              out_dir=ctx.out / "nsa", progress=report, model_id=ctx.spec.model,
              config=attribution_config(n.options))


def _has_eval(spec: JobSpec) -> bool:
    return spec.evaluate is not None


STAGES: list[Stage] = [
    Stage("calibration", 0.05, ("calibration.json",), (), _calibration, lambda s: s.calibration is not None),
    Stage("dense eval", 0.12, ("eval/dense/",), (), _dense_eval, _has_eval),
    Stage("prune", 0.38, ("masks.safetensors", "stats.json", "weights.safetensors"), ("calibration",), _prune),
    Stage("neurons", 0.02, ("neurons.parquet",), ("prune",), _neurons, uses_model=False),
    Stage("pruned eval", 0.15, ("eval/pruned/",), ("prune",), _pruned_eval, _has_eval),
    Stage("comparison", 0.01, ("eval/comparison.json",), ("dense eval", "pruned eval"), _comparison, _has_eval,
          uses_model=False),
    Stage("nsa", 0.27, ("nsa/",), ("prune",), _nsa, lambda s: s.nsa is not None),
]
LOAD_WEIGHT = 0.05
AVAILABILITY = {"load model": ("nsa.models",), "prune": ("pruners.engine", "pruners.io", "nsa.masks"),
                "neurons": ("pruners.families",), "nsa": ("nsa.attribution",)}


# --- helpers --------------------------------------------------------------------------------------------
def _masks(ctx: Context) -> dict:
    if "masks" not in ctx.extra:
        from nsa.masks import load_masks

        ctx.extra["masks"] = load_masks(ctx.out / "masks.safetensors")
    return ctx.extra["masks"]


def _ensure_pruned(ctx: Context) -> None:
    """Make the in-memory model the pruned one (after a reused prune stage or an NSA reload)."""
    if ctx.pruned:
        return
    from nsa.masks import apply_masks

    weights_path = ctx.out / "weights.safetensors"
    weights = None
    if weights_path.is_file():
        from safetensors.torch import load_file

        weights = load_file(str(weights_path))
    apply_masks(ctx.model, _masks(ctx), weights)
    ctx.pruned = True


def stages_for(spec: JobSpec) -> list[Stage]:
    return [s for s in STAGES if s.when(spec)]


def check_available(spec: JobSpec) -> None:
    """Fail at once, naming the stage, when a module a stage needs is not installed in this tree."""
    import importlib

    names = ["load model", *(s.name for s in stages_for(spec))]
    for name in names:
        for module in AVAILABILITY.get(name, ()):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                raise NSAError(f"stage {name!r} is not available: module {err.name} is missing from this "
                               "installation") from None


def _files_of(stage: Stage, manifest_files: dict) -> list[str]:
    return [rel for rel in manifest_files
            if any(rel == o or (o.endswith("/") and rel.startswith(o)) for o in stage.outputs)]


def plan_reuse(spec: JobSpec, old: Path) -> set[str]:
    """Stages whose artifacts in `old` all verify and whose inputs are reused too (so they are still valid)."""
    manifest = runs.read_manifest(old) if old.is_dir() else None
    if manifest is None:
        return set()
    try:
        same_spec = parse_spec(json.loads((old / "spec.json").read_text(encoding="utf-8"))).id == spec.id
    except (OSError, ValueError, NSAError):
        same_spec = False
    if not same_spec:
        return set()
    good = runs.good_files(old)
    reusable: set[str] = set()
    active = {s.name for s in stages_for(spec)}
    for stage in stages_for(spec):
        files = _files_of(stage, manifest["files"])
        deps_ok = all(d in reusable or d not in active for d in stage.needs)
        if files and deps_ok and all(f in good for f in files):
            reusable.add(stage.name)
    if "prune" not in reusable:
        reusable.discard("calibration")  # pruning again needs the calibration set in memory
    return reusable


class _Reporter:
    """Turns each stage's callbacks (events with `.fraction`/`.message`, or (fraction, message)) into
    `JobProgress` with the job's overall fraction."""

    def __init__(self, progress: Callable | None, log: logging.Logger):
        self.progress, self.log = progress, log
        self.base, self.weight, self.stage = 0.0, 0.0, ""

    def enter(self, stage: str, base: float, weight: float) -> Callable:
        self.base, self.weight, self.stage = base, weight, stage
        self.log.info("stage %s", stage)
        self.emit(0.0, "")
        return self.emit

    def emit(self, fraction: Any, message: str = "") -> None:
        if hasattr(fraction, "fraction"):
            fraction, message = fraction.fraction, getattr(fraction, "message", "") or message
        elif isinstance(fraction, dict):
            fraction, message = fraction.get("fraction", 0.0), fraction.get("message", message)
        f = min(max(float(fraction or 0.0), 0.0), 1.0)
        if message:
            self.log.info("%s %.0f%% %s", self.stage, 100 * f, message)
        if self.progress is not None:
            self.progress(JobProgress(self.stage, f, self.base + self.weight * f, str(message or "")))


# --- the job --------------------------------------------------------------------------------------------
def run_job(spec: Any, progress: Callable[[JobProgress], None] | None = None, run_id: str | None = None) -> Path:
    """Run every stage of `spec` (a `JobSpec` or mapping) and return the complete run folder.

    `run_id`: the queued job's id (its folder name); by default the spec's id now. They differ only when the
    model's files changed after the job was queued, and the job's folder must still be the one it announced.
    A run folder that already verifies is returned at once (nothing is recomputed).
    """
    spec = parse_spec(spec)
    run_id = run_id or spec.id
    final = runs.run_dir(run_id)
    if not runs.verify_folder(final):
        if progress is not None:
            progress(JobProgress("done", 1.0, 1.0, "already computed"))
        return final
    check_available(spec)
    runs.clean_partial(run_id)
    reusable = plan_reuse(spec, final)
    started = time.time()
    with atomic_dir(final) as out:
        log, handler = _job_logger(run_id, out)
        try:
            ctx = Context(spec=spec, out=out, old=final, reusable=reusable, log=log)
            _run_stages(ctx, _Reporter(progress, log))
            write_json(out / "spec.json", spec.to_dict())
            log.info("finished in %.1f s (reused: %s)", time.time() - started, ", ".join(sorted(reusable)) or "none")
        except BaseException:
            log.exception("job failed")
            raise
        finally:
            handler.close()
            log.removeHandler(handler)
        runs.write_manifest(out)
    if progress is not None:
        progress(JobProgress("done", 1.0, 1.0, f"run {run_id} complete"))
    return final


def _run_stages(ctx: Context, reporter: _Reporter) -> None:
    stages = stages_for(ctx.spec)
    to_run = [s for s in stages if s.name not in ctx.reusable]
    load = any(s.uses_model for s in to_run)
    total = (LOAD_WEIGHT if load else 0.0) + sum(s.weight for s in to_run) or 1.0
    for stage in stages:
        if stage.name in ctx.reusable:
            _copy_outputs(ctx, stage)
            ctx.log.info("stage %s reused from the previous run folder", stage.name)
    base = 0.0
    if load:
        _load_model(ctx, reporter.enter("load model", 0.0, LOAD_WEIGHT / total))
        base = LOAD_WEIGHT / total
    for stage in to_run:
        emit = reporter.enter(stage.name, base, stage.weight / total)
        stage.run(ctx, emit)
        emit(1.0, f"{stage.name} done")
        base += stage.weight / total


def _copy_outputs(ctx: Context, stage: Stage) -> None:
    manifest = runs.read_manifest(ctx.old) or {"files": {}}
    for rel in _files_of(stage, manifest["files"]):
        target = ctx.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ctx.old / rel, target)


def _job_logger(run_id: str, out: Path) -> tuple[logging.Logger, logging.Handler]:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"nsa.jobs.run.{run_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(out / "logs" / "job.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler
