"""What the model is asked: prompt, choices, gold index and the (context, continuation) requests."""
from __future__ import annotations

from nsa.datasets.registry import get_task
from nsa.datasets.spec import TaskSpec
from nsa.errors import NSAError


def prompt_for(spec: TaskSpec | str, example: dict) -> str:
    """The text the model is conditioned on (the harness's doc_to_text).

    For winogrande (partial scoring) each option has its own context; this returns the sentence with its
    blank and `requests_for` gives the true (context, continuation) pairs.
    """
    spec = get_task(spec)
    try:
        return spec.prompt.format(**example)
    except KeyError as err:
        raise NSAError(f"task {spec.name!r}: example has no field {err} needed by its prompt "
                       f"{spec.prompt!r}; fields present: {sorted(example)}") from None


def choices_for(spec: TaskSpec | str, example: dict) -> list[str]:
    """The continuations scored after the prompt, delimiter included (e.g. [" negative", " positive"])."""
    spec = get_task(spec)
    if spec.kind == "perplexity":
        return []
    if spec.partial:
        return [" " + example["continuation"]] * len(example["contexts"])
    words = spec.label_names if spec.kind == "classification" else example["choices"]
    return [spec.target_delimiter + str(w) for w in words]


def gold_for(spec: TaskSpec | str, example: dict) -> int | None:
    """Index of the correct choice (label / answer); None for perplexity rows."""
    spec = get_task(spec)
    if spec.kind == "perplexity":
        return None
    return int(example["label" if spec.kind == "classification" else "answer"])


def requests_for(spec: TaskSpec | str, example: dict) -> list[tuple[str, str]]:
    """(context, continuation) per choice, exactly what the harness scores for this row."""
    spec = get_task(spec)
    if spec.partial:
        return [(ctx, " " + example["continuation"]) for ctx in example["contexts"]]
    prompt = prompt_for(spec, example)
    return [(prompt, c) for c in choices_for(spec, example)]


def example_text(spec: TaskSpec | str, example: dict) -> str:
    """The row's own text (no prompt): what calibration windows and attribution read."""
    spec = get_task(spec)
    return "\n".join(str(example[f]) for f in spec.text_fields if f in example)

