"""`TaskSpec`: what one evaluation task is (group, kind, prompt, labels, where its rows live)."""
from __future__ import annotations

from dataclasses import dataclass

SENTIMENT_PROMPT = "{text}\nQuestion: Is this sentence positive or negative?\nAnswer:"
SENTIMENT_LABELS = ("negative", "positive")
GROUPS = ("sentiment", "inference", "qa", "lm", "custom")
KINDS = ("classification", "multiple_choice", "perplexity")


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task (or calibration-only text source).

    `prompt` is a `str.format` template over the row's fields (the harness's doc_to_text). For
    classification `label_names` are the choice words; each choice is scored as `target_delimiter + word`
    after the prompt (lm-eval's convention: " negative", " positive"). Multiple-choice rows carry their own
    `choices`. `partial` marks winogrande-style partial scoring: one context per option, a shared continuation.

    A prompt variant of a task (`nsa.datasets.prompts.prompted`) fills the last four fields: `shots` (the
    rendered few-shot examples, each followed by its answer), `chat` (the tokenizer's chat template around the
    user turn, as (prefix, suffix)), `shot_indices` (rows the shots came from) and `prompt_setting` (the
    `PromptConfig` it was made from, for the record). The reference prompt has them empty.
    """

    name: str
    group: str
    kind: str
    description: str
    prompt: str = "{text}"
    label_names: tuple[str, ...] = ()
    local_name: str | None = None  # folder under NSA_DATA_DIR
    split: str = "test"  # local evaluation split
    calib_split: str | None = None  # local split used as calibration text (default: `split`)
    path: str | None = None  # explicit file (demo / custom tasks)
    hf_id: str | None = None
    hf_config: str | None = None
    hf_split: str | None = None
    hf_normalizer: str | None = None  # key in `HF_NORMALIZERS`: hub row -> local schema
    harness_task: str | None = None  # the harness's own task name (online users)
    metrics: tuple[str, ...] = ("acc",)
    required_fields: tuple[str, ...] = ("text", "label")
    target_delimiter: str = " "
    partial: bool = False
    synthetic: bool = False
    text_fields: tuple[str, ...] = ("text",)  # fields whose text makes calibration windows / truncation
    field_map: tuple[tuple[str, str], ...] = ()  # (file column, schema field) renames, for custom files
    notes: str = ""
    shots: str = ""
    chat: tuple[str, str] | None = None
    shot_indices: tuple[int, ...] = ()
    prompt_setting: tuple[tuple[str, object], ...] = ()
