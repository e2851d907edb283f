"""The prompt-setting flags shared by `evaluate` and `attribute` (a job spec's `prompt:` section)."""
from __future__ import annotations

import argparse

from nsa.datasets import PRESETS, PromptConfig, check_shots
from nsa.errors import NSAError


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("prompt of classification tasks (default: each task's reference prompt)")
    g.add_argument("--prompt", default="reference",
                   help=f"a preset ({', '.join(PRESETS)}) or a template over the row's fields, e.g. "
                        "'Review: {text}\\nSentiment:'")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples before each prompt")
    g.add_argument("--fewshot-seed", type=int, default=0, help="seed drawing the few-shot examples")


def prompt_from_args(args: argparse.Namespace, specs: list, limit: int | None) -> PromptConfig:
    """The PromptConfig of the flags, checked against the tasks it will ask; errors name the flag."""
    try:
        config = PromptConfig(template=args.prompt.replace("\\n", "\n"), chat=args.chat,
                              num_fewshot=args.num_fewshot, fewshot_seed=args.fewshot_seed)
        config.check(specs)
        for spec in specs:
            check_shots(spec, config, limit)
        return config
    except NSAError as err:
        raise NSAError(err.at("--" + (err.field or "prompt").replace("_", "-").replace("template", "prompt"))) \
            from None
