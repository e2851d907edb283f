"""The dataset / task registry: what each evaluation task and calibration source is, and how to load it.

Modules: `spec` (TaskSpec), `registry` (built-in tasks, lookup), `prompts` (prompt / choices / gold),
`loading` (file -> NSA_DATA_DIR -> hub, validation), `hub` (hub rows -> local schema), `custom` (user files).

Every task is a `TaskSpec`: its group (sentiment / inference / qa / lm / custom), kind (classification /
multiple_choice / perplexity), where its rows come from (Hugging Face id, config, split and the local JSONL
split under `NSA_DATA_DIR`), its prompt and its choices. The prompts are lm-evaluation-harness's own
(glue/sst2, glue/rte, super_glue/boolq, arc, openbookqa, piqa, hellaswag, winogrande), so that the local
variants generated in `nsa.harness` score exactly what the harness's registered tasks score online.

Loading order (`load_examples`): an explicit file (`path=`, demo and custom tasks) -> the local data dir
(`NSA_DATA_DIR/<local_name>/<split>.jsonl`, layout in ../shared/data/README.md) -> `datasets.load_dataset`
(hub cache, or the network when online). When none has the rows an `NSAError` names every option at once.

Rows are returned in the local JSONL schema whatever their origin:
- classification: `{"text": str, "label": int}` (rte: `premise`, `hypothesis`; boolq: `passage`, `question`)
- multiple choice: `{"question": str, "choices": [str, ...], "answer": int}` (winogrande also `sentence`,
  `contexts`, `continuation`: it is scored by partial evaluation, one context per option)
- perplexity / calibration: `{"text": str}`
Every row also gets `"index"`: its 0-based position in the split, which evaluation records use.
"""
from __future__ import annotations

from nsa.datasets.custom import register_custom_task, unregister_task
from nsa.datasets.loading import (
                                  check_limit,
                                  data_file,
                                  load_examples,
                                  local_file,
                                  read_file,
)
from nsa.datasets.prompts import (
                                  PRESETS,
                                  PromptConfig,
                                  check_shots,
                                  choices_for,
                                  example_text,
                                  gold_for,
                                  prompt_for,
                                  prompted,
                                  requests_for,
)
from nsa.datasets.registry import (
                                  CALIBRATION_FILES,
                                  dataset_meta,
                                  get_task,
                                  harness_task_names,
                                  list_tasks,
                                  task_info,
)
from nsa.datasets.spec import (
                                  GROUPS,
                                  KINDS,
                                  SENTIMENT_LABELS,
                                  SENTIMENT_PROMPT,
                                  TaskSpec,
)

__all__ = [
    "CALIBRATION_FILES", "GROUPS", "KINDS", "PRESETS", "SENTIMENT_LABELS", "SENTIMENT_PROMPT", "PromptConfig",
    "TaskSpec", "check_limit", "check_shots", "choices_for", "data_file", "dataset_meta", "example_text", "get_task",
    "gold_for", "harness_task_names", "list_tasks", "load_examples", "local_file", "prompt_for", "prompted",
    "read_file", "register_custom_task", "requests_for", "task_info", "unregister_task",
]
