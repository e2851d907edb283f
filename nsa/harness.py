"""lm-evaluation-harness glue: local task variants generated at run time, and the in-memory model wrapper.

A registered task becomes a harness task config (a dict, as a task YAML would be) over a JSONL file:
`dataset_path: json` + `dataset_kwargs.data_files`, `output_type: multiple_choice`, and doc_to_text /
doc_to_choice / doc_to_target taken from `nsa.datasets` (`prompt_for`, `choices_for`, `gold_for`), so the
harness scores exactly the registry's prompt (sst2: lm-eval's glue/sst2 prompt and choices). The rows the
harness reads are the ones `load_examples` returned (validated, `index` kept), written under
`cache_dir()/harness/` by content hash.

Online users can evaluate the harness's own registered task instead (`TaskSpec.harness_task`, e.g. "sst2"
-> glue/sst2 on nyu-mll/glue): `harness_configs(..., online=True)`.

Everything here imports lm_eval lazily: its import costs about a second and a half, kept out of the CLI's
`--help` and the app's page loads.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nsa import datasets as D
from nsa.atomic import write_jsonl
from nsa.paths import cache_dir

TASK_PREFIX = "nsa_"


def harness_name(spec: D.TaskSpec) -> str:
    """Name of the generated local variant inside the harness (kept apart from its registered tasks)."""
    return TASK_PREFIX + spec.name


def rows_file(spec: D.TaskSpec, rows: list[dict]) -> Path:
    """Write the rows the harness will read to a content-addressed JSONL (once) and return its path."""
    blob = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    digest = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / "harness" / f"{spec.name}-{len(rows)}-{digest}.jsonl"
    if not path.is_file():
        write_jsonl(path, rows)
    return path


def task_config(spec: D.TaskSpec, data_file: Path) -> dict[str, Any]:
    """The harness task config of a classification / multiple-choice task over `data_file`."""
    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in spec.metrics]
    config: dict[str, Any] = {
        "task": harness_name(spec),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "target_delimiter": spec.target_delimiter,
        "metric_list": metrics,
        "metadata": {"version": 1.0, "nsa_task": spec.name, "prompt": spec.prompt},
    }
    if spec.partial:  # winogrande: the gold index selects the context; the continuation is shared
        config.update(doc_to_text=lambda doc: D.gold_for(spec, doc),
                      doc_to_choice=lambda doc: list(doc["contexts"]),
                      doc_to_target=lambda doc: doc["continuation"])
    else:
        delim = len(spec.target_delimiter)
        config.update(doc_to_text=lambda doc: D.prompt_for(spec, doc),
                      doc_to_choice=lambda doc: [c[delim:] for c in D.choices_for(spec, doc)],
                      doc_to_target=lambda doc: D.gold_for(spec, doc))
    return config


def harness_configs(specs: list[D.TaskSpec], rows: dict[str, list[dict]], online: bool = False) -> list:
    """Task configs (local variants) or, with `online=True`, the harness's own task names."""
    if online:
        return [spec.harness_task for spec in specs]
    return [task_config(spec, rows_file(spec, rows[spec.name])) for spec in specs]


@dataclass
class RequestLog:
    """What the wrapper saw: truncated (context, continuation) pairs and how many requests were run."""

    truncated: set = field(default_factory=set)
    done: int = 0  # sequences the model has run
    total: int = 0  # sequences it will run
    tokens: int = 0  # real (unpadded) tokens in those sequences
    seconds: float = 0.0  # time spent scoring them (the harness's loglikelihood loop, model calls included)


def make_lm(model, tokenizer, batch_size: int, max_length: int | None = None,
            on_batch: Callable[[int, int], None] | None = None):
    """An HFLM around the in-memory model that also records left-truncations and reports progress.

    The harness itself truncates a too-long (context + continuation) from the left to `max_length`
    (the model's `max_position_embeddings` unless given); this subclass only records which requests it cut
    (same test as the harness: total tokens > max_length + 1) and counts the requests run. A continuation
    longer than max_length (the harness would assert) is scored on its last max_length tokens.
    """
    from lm_eval.models.huggingface import HFLM

    class NSALM(HFLM):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.nsa_log = RequestLog()

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
            for request, ctx, cont in requests:
                if len(ctx) + len(cont) > self.max_length + 1:
                    self.nsa_log.truncated.add(tuple(request))
            # A continuation longer than the context itself would trip the harness's assert: score its
            # last max_length tokens (left truncation again); the example is counted as truncated above.
            requests = [(req, ctx, cont[-self.max_length:]) for req, ctx, cont in requests]
            # rows the model will run: the harness computes one-token continuations sharing a context once
            if self.logits_cache:
                lengths = {tuple(ctx + cont[:-1]): len(ctx) + len(cont) - 1 for _, ctx, cont in requests}.values()
            else:
                lengths = [len(ctx) + len(cont) - 1 for _, ctx, cont in requests]
            self.nsa_log.total += len(lengths)
            self.nsa_log.tokens += sum(min(n, self.max_length) for n in lengths)
            start = time.perf_counter()
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            finally:
                self.nsa_log.seconds += time.perf_counter() - start

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            # our own progress callback replaces the harness's tqdm bars when one is given
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or on_batch is not None)

        def _model_call(self, inps, attn_mask=None, labels=None):
            out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            self.nsa_log.done += int(inps.shape[0])
            if on_batch is not None:
                on_batch(self.nsa_log.done, self.nsa_log.total)
            return out

    device = str(next(model.parameters()).device)
    return NSALM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                 device=device)


def task_manager():
    """A TaskManager that does not index the harness's ~10k built-in YAMLs (local variants need none)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def memoize_env_info() -> None:
    """Collect the harness's environment report once per process instead of once per evaluation.

    `simple_evaluate` always calls `add_env_info`, which runs torch's `collect_env` (several subprocesses,
    ~0.4 s): the same answer every time within a process. The ablation study calls the evaluator dozens of
    times, so the first report is reused (same keys and values in every result).
    """
    import copy

    import lm_eval.evaluator as evaluator

    if getattr(evaluator.add_env_info, "nsa_memoized", False):
        return
    original = evaluator.add_env_info
    cached: dict = {}

    def add_env_info(storage: dict) -> None:
        if not cached:
            original(cached)
        storage.update(copy.deepcopy(cached))

    add_env_info.nsa_memoized = True
    evaluator.add_env_info = add_env_info
