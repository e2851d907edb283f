"""What the model is asked: prompt, choices, gold index and the (context, continuation) requests; and the
prompt settings of classification tasks (`PromptConfig`: template, chat template, few-shot examples).

The reference prompt of every task is lm-evaluation-harness's own (glue/sst2 for the sentiment tasks). A
`PromptConfig` makes a variant of a classification task (`prompted`): another template over the row's fields
(or a named preset; it applies to the tasks whose rows have the fields it names — "review" asks the sentiment
tasks, RTE and BoolQ keep their own prompts, and each result records which prompt it used), the model's chat
template around the user turn (the answer then follows the assistant
tag with no space, as a chat model writes it), and `num_fewshot` examples, each followed by its gold answer,
drawn by seed from the task's training split — or, for a task with only an evaluation split, from the rows
beyond the evaluated ones — never from the evaluated examples. The variant is an ordinary `TaskSpec`, so the
evaluator, NSA and the dense cache (whose key covers the rendered prompt) all see the same text.
"""
from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass, replace

from nsa.datasets.loading import load_examples, local_file
from nsa.datasets.registry import get_task
from nsa.datasets.spec import TaskSpec
from nsa.errors import NSAError

PRESETS = {
    "reference": None,  # the task's own prompt (lm-evaluation-harness)
    "review": "Review: {text}\nSentiment:",
    "sentence": "Sentence: {text}\nSentiment:",
}
SHOT_SEPARATOR = "\n\n"
_PLACEHOLDER = "\x00NSA-USER-TURN\x00"


@dataclass(frozen=True)
class PromptConfig:
    """How classification tasks are asked (a job spec's `prompt:` section). Defaults = the reference."""

    template: str = "reference"  # a preset name (PRESETS) or a str.format template over the row's fields
    chat: bool = False  # wrap the prompt in the tokenizer's chat template (a user turn, then the assistant tag)
    num_fewshot: int = 0
    fewshot_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or not self.template.strip():
            raise NSAError(f"expected a preset ({', '.join(PRESETS)}) or a template such as "
                           f"'Review: {{text}}\\nSentiment:', got {self.template!r}", "template")
        if self.template not in PRESETS:
            fields = template_fields(self.template)
            if not fields:
                raise NSAError(f"{self.template[:80]!r} is neither a preset ({', '.join(PRESETS)}) nor a template "
                               "naming a field of the rows, such as {text}", "template")
        if not isinstance(self.chat, bool):
            raise NSAError(f"expected true or false, got {self.chat!r}", "chat")
        for name, top in (("num_fewshot", 32), ("fewshot_seed", 2**32 - 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise NSAError(f"expected an integer in [0, {top}], got {value!r}", name)

    @property
    def is_reference(self) -> bool:
        return self == PromptConfig()

    def text(self) -> str | None:
        """The template string (None = the task's reference prompt)."""
        return PRESETS.get(self.template, self.template)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "PromptConfig":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise NSAError(f"expected a mapping with template, chat, num_fewshot, fewshot_seed; got {data!r}")
        allowed = {"template", "chat", "num_fewshot", "fewshot_seed"}
        unknown = sorted(map(str, set(data) - allowed))
        if unknown:
            raise NSAError(f"unknown key (allowed here: {', '.join(sorted(allowed))})", unknown[0])
        return cls(**data)

    def fits(self, spec: TaskSpec) -> bool:
        """The template applies to this task: a classification task whose rows have every field it names."""
        text = self.text()
        return spec.kind == "classification" and (
            text is None or not template_fields(text) - set(spec.required_fields) - {"index"})

    def check(self, specs: list[TaskSpec]) -> None:
        """Refuse (before anything runs) a template that fits none of the run's classification tasks."""
        classification = [s for s in specs if s.kind == "classification"]
        if self.text() is not None and classification and not any(self.fits(s) for s in classification):
            raise NSAError(f"the template names {', '.join(sorted(template_fields(self.text())))}, which the rows "
                           f"of {', '.join(s.name for s in classification)} lack (their fields: "
                           f"{'; '.join(', '.join(s.required_fields) for s in classification)})", "template")


def check_shots(spec: TaskSpec, config: PromptConfig, limit: int | None) -> None:
    """Refuse (before anything runs) few-shot examples a task cannot provide without evaluated rows."""
    if config.num_fewshot and spec.kind == "classification":
        _shot_rows(spec, config, limit)


def template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError:
        return set()


def prompted(spec: TaskSpec | str, config: PromptConfig | None, tokenizer=None,
             limit: int | None = None) -> TaskSpec:
    """The task asked as `config` says (the task itself for the reference setting or a non-classification
    task). `tokenizer` renders the chat template; `limit` is the evaluated example set (shots avoid it)."""
    spec = get_task(spec)
    if config is None or config.is_reference or spec.kind != "classification":
        return spec
    changes: dict = {"prompt_setting": tuple(sorted(config.to_dict().items()))}
    if config.text() is not None and config.fits(spec):
        changes["prompt"] = config.text()
    if config.chat:
        changes["chat"] = chat_wrapper(tokenizer)
        changes["target_delimiter"] = ""
    variant = replace(spec, **changes)
    if config.num_fewshot:
        indices, rows = _shot_rows(spec, config, limit)
        body = [variant.prompt.format(**row) + variant.target_delimiter + variant.label_names[int(row["label"])]
                for row in rows]
        variant = replace(variant, shots=SHOT_SEPARATOR.join(body) + SHOT_SEPARATOR, shot_indices=tuple(indices))
    return variant


def chat_wrapper(tokenizer) -> tuple[str, str]:
    """(text before, text after) the user turn in the tokenizer's chat template, generation prompt included."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise NSAError("this model's tokenizer has no chat template: set prompt.chat to false", "chat")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _PLACEHOLDER}], tokenize=False,
                                             add_generation_prompt=True)
    before, _, after = rendered.partition(_PLACEHOLDER)
    return before, after


def _shot_rows(spec: TaskSpec, config: PromptConfig, limit: int | None) -> tuple[list[int], list[dict]]:
    """Few-shot rows by seed: the training split when the task has one locally, else the evaluation split's
    rows after the first `limit` (the evaluated ones)."""
    train = local_file(spec, spec.calib_split) if spec.calib_split else None
    if train is not None and train.is_file():
        pool = load_examples(spec, split=spec.calib_split)
    else:
        rows = load_examples(spec)
        pool = rows[limit:] if limit is not None else []
        if len(pool) < config.num_fewshot:
            raise NSAError(f"task {spec.name!r} has no training split here, and its evaluation split has "
                           f"{len(rows)} rows of which {limit or len(rows)} are evaluated: not enough left for "
                           f"{config.num_fewshot} few-shot examples (lower the limit or num_fewshot)",
                           "num_fewshot")
    chosen = sorted(random.Random(config.fewshot_seed).sample(range(len(pool)), config.num_fewshot))
    return [int(pool[i]["index"]) for i in chosen], [pool[i] for i in chosen]


def prompt_for(spec: TaskSpec | str, example: dict) -> str:
    """The text the model is conditioned on (the harness's doc_to_text).

    For winogrande (partial scoring) each option has its own context; this returns the sentence with its
    blank and `requests_for` gives the true (context, continuation) pairs.
    """
    spec = get_task(spec)
    try:
        body = spec.prompt.format(**example)
    except KeyError as err:
        raise NSAError(f"task {spec.name!r}: example has no field {err} needed by its prompt "
                       f"{spec.prompt!r}; fields present: {sorted(example)}") from None
    before, after = spec.chat or ("", "")
    return before + spec.shots + body + after


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

