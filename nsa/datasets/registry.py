"""The registry of tasks: the built-in ones (the paper's four groups + the synthetic demo sets), lookup,
the harness task names for online users, and what each local dataset's meta.json says."""
from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from nsa.datasets.spec import SENTIMENT_LABELS, SENTIMENT_PROMPT, TaskSpec
from nsa.errors import NSAError
from nsa.paths import DEMO_DATA_DIR, cache_dir, data_dir


def _sentiment(name: str, hf_id: str, hf_config: str | None, hf_split: str, normalizer: str, split: str,
               description: str, harness: str | None = None, calib_split: str | None = None) -> TaskSpec:
    return TaskSpec(name=name, group="sentiment", kind="classification", description=description,
                    prompt=SENTIMENT_PROMPT, label_names=SENTIMENT_LABELS, local_name=name, split=split,
                    calib_split=calib_split, hf_id=hf_id, hf_config=hf_config, hf_split=hf_split,
                    hf_normalizer=normalizer, harness_task=harness)


def _mc(name: str, hf_id: str, hf_config: str | None, hf_split: str, normalizer: str, split: str,
        prompt: str, description: str, metrics: tuple[str, ...] = ("acc", "acc_norm")) -> TaskSpec:
    return TaskSpec(name=name, group="qa", kind="multiple_choice", description=description, prompt=prompt,
                    local_name=name, split=split, hf_id=hf_id, hf_config=hf_config, hf_split=hf_split,
                    hf_normalizer=normalizer, harness_task=name, metrics=metrics,
                    required_fields=("question", "choices", "answer"), text_fields=("question",))


_BUILTIN: list[TaskSpec] = [
    _sentiment("sst2", "nyu-mll/glue", "sst2", "validation", "sst2", "validation",
               "SST-2 movie-review sentences (GLUE dev, 872)", harness="sst2", calib_split="train_sample"),
    _sentiment("yelp_polarity", "fancyzhx/yelp_polarity", None, "test", "text_label", "test",
               "Yelp review polarity (1000 test reviews, lowercased/tokenized)"),
    _sentiment("imdb", "stanfordnlp/imdb", None, "test", "text_label", "test",
               "IMDB movie reviews (1000 test reviews, lowercased/tokenized)"),
    _sentiment("amazon_polarity", "fancyzhx/amazon_polarity", None, "test", "amazon", "test",
               "Amazon review polarity ('<title>: <body>', first 1000 test reviews)"),
    _sentiment("sentiment140", "stanfordnlp/sentiment140", None, "test", "sentiment140", "test",
               "Sentiment140 hand-labelled tweets (neutral dropped, 359)"),
    TaskSpec(name="rte", group="inference", kind="classification",
             description="RTE textual entailment (GLUE dev, 277)",
             prompt="{premise}\nQuestion: {hypothesis} True or False?\nAnswer:", label_names=("True", "False"),
             local_name="rte", split="validation", hf_id="nyu-mll/glue", hf_config="rte", hf_split="validation",
             hf_normalizer="rte", harness_task="rte", required_fields=("premise", "hypothesis", "label"),
             text_fields=("premise", "hypothesis")),
    TaskSpec(name="boolq", group="inference", kind="classification",
             description="BoolQ yes/no reading comprehension (dev, 3270)",
             prompt="{passage}\nQuestion: {question}?\nAnswer:", label_names=("no", "yes"),
             local_name="boolq", split="validation", hf_id="aps/super_glue", hf_config="boolq",
             hf_split="validation", hf_normalizer="boolq", harness_task="boolq",
             required_fields=("passage", "question", "label"), text_fields=("passage", "question")),
    _mc("arc_easy", "allenai/ai2_arc", "ARC-Easy", "test", "arc", "test", "Question: {question}\nAnswer:",
        "ARC-Easy science questions (test, 2376)"),
    _mc("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test", "arc", "test",
        "Question: {question}\nAnswer:", "ARC-Challenge science questions (test, 1172)"),
    _mc("openbookqa", "allenai/openbookqa", "main", "test", "obqa", "test", "{question}",
        "OpenBookQA (test, 500; question stem only)"),
    _mc("piqa", "baber/piqa", None, "validation", "piqa", "validation", "Question: {question}\nAnswer:",
        "PIQA physical commonsense (dev, 1838)"),
    replace(_mc("hellaswag", "Rowan/hellaswag", None, "validation", "hellaswag", "validation_sample", "{question}",
                "HellaSwag sentence completion (random 2000 of the 10042 dev items)"),
            notes="local contexts keep ctx_b's lowercase first letter; lm-eval capitalizes it"),
    replace(_mc("winogrande", "allenai/winogrande", "winogrande_xl", "validation", "winogrande", "validation",
                "{sentence}", "WinoGrande xl dev (1267), partial scoring", metrics=("acc",)),
            partial=True, required_fields=("contexts", "continuation", "answer"), text_fields=("sentence",)),
    TaskSpec(name="wikitext2", group="lm", kind="perplexity",
             description="WikiText-2 raw (test for perplexity, train sample for calibration)",
             local_name="wikitext2", split="test", calib_split="train_sample", hf_id="Salesforce/wikitext",
             hf_config="wikitext-2-raw-v1", hf_split="test", hf_normalizer="text", harness_task="wikitext",
             metrics=("ppl",), required_fields=("text",),
             notes="the local copy lacks the 1467 empty rows of the hub split"),
    TaskSpec(name="c4", group="lm", kind="perplexity", description="C4 en validation (2000-document sample)",
             local_name="c4", split="validation_sample", hf_id="allenai/c4", hf_config="en",
             hf_split="validation", hf_normalizer="text", harness_task=None, metrics=("ppl",),
             required_fields=("text",)),
    TaskSpec(name="demo-reviews", group="sentiment", kind="classification", synthetic=True,
             description="SYNTHETIC templated reviews of five domains (films, restaurants, hotels, products, "
                         "books; demo test set)", prompt=SENTIMENT_PROMPT,
             label_names=SENTIMENT_LABELS, path=str(DEMO_DATA_DIR / "reviews_test.jsonl")),
    TaskSpec(name="demo-unseen", group="sentiment", kind="classification", synthetic=True,
             description="SYNTHETIC reviews with nouns and descriptive adjectives unseen in demo training",
             prompt=SENTIMENT_PROMPT,
             label_names=SENTIMENT_LABELS, path=str(DEMO_DATA_DIR / "unseen_test.jsonl")),
    TaskSpec(name="demo-facts", group="qa", kind="multiple_choice", synthetic=True,
             description="synthetic: facts stated in the demo training text", prompt="{question}",
             metrics=("acc", "acc_norm"), required_fields=("question", "choices", "answer"),
             text_fields=("question",), path=str(DEMO_DATA_DIR / "facts_test.jsonl")),
]

_TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _BUILTIN}

# Calibration-only text sources (tasks are sources too, see `nsa.calibration`).
CALIBRATION_FILES: dict[str, Path] = {
    "demo-generic": DEMO_DATA_DIR / "generic_calib.jsonl",
    "demo-reviews": DEMO_DATA_DIR / "reviews_calib.jsonl",
}


def custom_tasks_file() -> Path:
    """Custom tasks registered by any process, so job workers and the app resolve the same names."""
    return cache_dir() / "tasks" / "custom.json"


def saved_custom() -> dict:
    path = custom_tasks_file()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}


def custom_spec(name: str, path: str, label_names, text_field: str, label_field: str, prompt: str) -> TaskSpec:
    """The spec of a custom classification task (its rows are checked by `register_custom_task`)."""
    return TaskSpec(name=name, group="custom", kind="classification", description=f"custom task from {path}",
                    prompt=prompt, label_names=tuple(label_names), path=path,
                    field_map=((text_field, "text"), (label_field, "label")))


def _load_saved(name: str) -> None:
    """Register a task saved by another process (no-op when unknown or its file is gone)."""
    entry = saved_custom().get(name)
    if isinstance(entry, dict) and Path(str(entry.get("path", ""))).is_file():
        try:
            _TASKS[name] = custom_spec(name, **entry)
        except TypeError:
            pass  # an entry written by another version: the name stays unknown


def list_tasks(group: str | None = None, kind: str | None = None) -> list[str]:
    """Registered task names (built-in, demo and custom), optionally filtered by group / kind."""
    for saved in saved_custom():
        if saved not in _TASKS:
            _load_saved(saved)
    return [n for n, s in _TASKS.items() if (group is None or s.group == group) and (kind is None or s.kind == kind)]


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The task's spec; an unknown name raises `NSAError` listing the registered ones."""
    if isinstance(name, TaskSpec):
        return name
    if not isinstance(name, str):
        raise NSAError(f"a task name must be text, got {name!r}")
    if name not in _TASKS:
        _load_saved(name)
    try:
        return _TASKS[name]
    except KeyError:
        raise NSAError(f"unknown dataset/task {name[:80]!r}; known: {', '.join(_TASKS)} "
                       "(or register a CSV/JSONL file with register_custom_task)") from None


def harness_task_names() -> dict[str, str | None]:
    """Registered task -> the harness's own task name (for online users; None where it has none)."""
    return {n: s.harness_task for n, s in _TASKS.items()}


def dataset_meta(name: str) -> dict:
    """The local dataset's meta.json (label names, fields, sources, split sizes), or {} when absent."""
    spec = get_task(name)
    root = data_dir()
    if not spec.local_name or root is None:
        return {}
    return read_meta(str(root / spec.local_name))


@lru_cache(maxsize=64)
def read_meta(folder: str) -> dict:
    path = Path(folder) / "meta.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NSAError(f"{path} is not valid JSON ({err}); fix or remove it") from None


def task_info(name: str | TaskSpec) -> dict:
    """A row for tables (docs, the app): what the task is and where its data comes from."""
    spec = get_task(name)
    meta = dataset_meta(spec.name)
    splits = {k: v.get("rows") for k, v in meta.get("splits", {}).items()}
    return {"name": spec.name, "group": spec.group, "kind": spec.kind, "description": spec.description,
            "synthetic": spec.synthetic, "labels": list(spec.label_names), "metrics": list(spec.metrics),
            "split": spec.split, "local_splits": splits, "hf": spec.hf_id, "hf_config": spec.hf_config,
            "hf_split": spec.hf_split, "harness_task": spec.harness_task, "path": spec.path, "notes": spec.notes}


def check_meta(spec: TaskSpec, folder: Path) -> None:
    """The folder's meta.json must agree with the registry on the number of labels (a wrong folder else)."""
    names = read_meta(str(folder)).get("label_names")
    if names and spec.label_names and len(names) != len(spec.label_names):
        raise NSAError(f"{folder}/meta.json lists {len(names)} labels {names} but task {spec.name!r} has "
                       f"{len(spec.label_names)} ({list(spec.label_names)}); is NSA_DATA_DIR the right folder?")



def add_task(spec: TaskSpec) -> None:
    """Register (or replace) a task; used for custom tasks."""
    _TASKS[spec.name] = spec


def remove_task(name: str) -> None:
    _TASKS.pop(name, None)


def task_or_none(name: str) -> TaskSpec | None:
    """The registered spec, without consulting saved custom tasks."""
    return _TASKS.get(name)
