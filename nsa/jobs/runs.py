"""Run folders: the one locator (`run_entry`), the declared artifacts of a run, listing and deletion.

A run folder (`cache_dir()/runs/<run_id>/`) is an `nsa.artifacts.Entry`: built in a temporary sibling and
swapped in after its manifest (size and sha256 of every file) is written, verified by whoever reads it.
`RUN_ARTIFACTS` declares every file a run can hold, its format and the pipeline stage that writes it; the
pipeline's stages, the reuse of a partly corrupted run, the app's readers and the docs use this one table.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from nsa.artifacts import Entry, read_json
from nsa.atomic import write_json
from nsa.errors import NSAError
from nsa.paths import cache_dir

RUN_FORMAT = 1
RUN_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the run folder; a folder ends with "/"
    format: str
    stage: str  # the pipeline stage that writes it
    what: str


RUN_ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("spec.json", "json", "job", "the normalised job spec"),
    Artifact("logs/job.log", "text", "job", "the job's log"),
    Artifact("calibration.json", "json", "calibration", "the calibration set: source, shape, tokens, diversity"),
    Artifact("eval/dense/", "json+jsonl", "dense eval", "summary.json and <task>.jsonl per example, dense"),
    Artifact("masks.safetensors", "safetensors", "prune", "uint8 masks, 1 = pruned, keyed by parameter name"),
    Artifact("stats.json", "json", "prune", "the prune config, per-module sparsity, timings, versions"),
    Artifact("weights.safetensors", "safetensors", "prune", "pruned weights when the method changed kept ones"),
    Artifact("neurons.parquet", "parquet", "neurons", "per MLP neuron: layer, index, frac_in, frac_out"),
    Artifact("eval/pruned/", "json+jsonl", "pruned eval", "summary.json and <task>.jsonl per example, pruned"),
    Artifact("eval/comparison.json", "json", "comparison", "drop with paired 95% CI, McNemar, flips per task"),
    Artifact("nsa/", "json+jsonl", "nsa", "summary, words, labels, shifts, clusters, flips, top examples"),
)


def artifacts_of(stage: str) -> tuple[str, ...]:
    return tuple(a.path for a in RUN_ARTIFACTS if a.stage == stage)


def runs_dir() -> Path:
    return cache_dir() / "runs"


def check_run_id(run_id: str) -> str:
    """A run id is 16 lowercase hex digits (nothing else can name a folder under runs/)."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise NSAError(f"not a run id: {str(run_id)[:40]!r} (run ids are 16 hex digits; list them with "
                       "`python -m nsa runs`)")
    return run_id


def run_entry(run_id: str) -> Entry:
    """The run's folder as a verifiable entry (it exists only once the run is complete)."""
    return Entry(runs_dir() / check_run_id(run_id), "run", RUN_FORMAT)


class ArtifactError(NSAError):
    """A run artifact is missing or fails verification. `recompute` says whether re-submitting the run's spec
    rebuilds it."""

    def __init__(self, run_id: str, artifact: str, problem: str, recompute: bool = True):
        self.run_id, self.artifact, self.recompute = run_id, artifact, recompute
        hint = " Recompute the run to rebuild it." if recompute else ""
        super().__init__(f"run {run_id}: {artifact} {problem}.{hint}")


def existing_run(run_id: str) -> Entry:
    """The entry of a complete run folder; `ArtifactError` (a sentence) for an unknown or unfinished id."""
    entry = run_entry(run_id)
    if not entry.folder.is_dir():
        raise ArtifactError(run_id, "run folder", "does not exist (deleted, or the job has not finished; list the "
                            "runs with `python -m nsa runs`)", recompute=False)
    return entry


def run_artifact(run_id: str, rel: str, required: bool = True) -> Path | None:
    """The artifact's path once it verifies against the run's manifest (size always, hash once per process);
    a missing optional artifact is None; a changed one is an `ArtifactError` (never read as if it were real)."""
    entry = existing_run(run_id)
    problem = entry.file_problem(rel)
    if problem in ("not in the manifest", "missing"):
        if required:
            raise ArtifactError(run_id, rel, "is missing")
        return None
    if problem is not None:
        raise ArtifactError(run_id, rel, f"failed verification ({problem})")
    return entry.path(rel)


def artifact_sha(run_id: str, rel: str) -> str:
    """The sha256 the run's manifest records for a verified artifact (what derived entries are keyed by)."""
    run_artifact(run_id, rel)
    return run_entry(run_id).manifest()["files"][rel]["sha256"]


def run_dir(run_id: str) -> Path:
    return run_entry(run_id).folder


def verify_run(run_id: str, deep: bool | None = None) -> list[str]:
    """Problems with run `run_id` ([] = complete and unchanged); see `Entry.problems` for `deep`."""
    return run_entry(run_id).problems(deep)


def is_complete(run_id: str, deep: bool | None = None) -> bool:
    return not verify_run(run_id, deep)


@dataclass
class RunInfo:
    id: str
    path: Path
    size: int  # bytes on disk
    created: str
    ok: bool
    problems: list[str]
    spec: dict | None


def list_runs(verify: bool = False) -> list[RunInfo]:
    """Every run folder, newest first (`verify=True` re-hashes every artifact; otherwise sizes only)."""
    root = runs_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir() or not RUN_ID.match(folder.name):
            continue
        entry = run_entry(folder.name)
        problems = entry.problems(deep=True if verify else False)
        try:
            spec = read_json(folder / "spec.json")
        except (OSError, ValueError):
            spec = None
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        out.append(RunInfo(id=folder.name, path=folder, size=size, created=(entry.manifest() or {}).get("created", ""),
                           ok=not problems, problems=problems, spec=spec))
    return sorted(out, key=lambda r: r.created, reverse=True)


def tags_file() -> Path:
    return cache_dir() / "run_tags.json"


def tags() -> dict[str, str]:
    """{run id: the user's tag} (a name given in the app or with `nsa runs --tag`)."""
    try:
        data = read_json(tags_file())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def set_tag(run_id: str, tag: str) -> None:
    """Name a run (an empty tag removes it); tags are up to 60 printable characters."""
    check_run_id(run_id)
    tag = " ".join(str(tag).split())
    if len(tag) > 60 or not tag.isprintable():
        raise NSAError(f"a tag is up to 60 printable characters, got {len(tag)}")
    current = tags()
    if tag:
        current[run_id] = tag
    else:
        current.pop(run_id, None)
    write_json(tags_file(), current)


def delete_run(run_id: str) -> None:
    """Remove a run folder (and any half-built temporary folder of it)."""
    entry = run_entry(run_id)
    if not entry.folder.is_dir():
        raise NSAError(f"no run {run_id!r} under {runs_dir()} (list them with `python -m nsa runs`)")
    shutil.rmtree(entry.folder)
    entry.clean_partial()
    if run_id in tags():
        set_tag(run_id, "")


def clean_partial(run_id: str) -> int:
    """Remove half-built temporary folders of `run_id` left by a killed job (recovering an interrupted swap)."""
    return run_entry(run_id).clean_partial()
