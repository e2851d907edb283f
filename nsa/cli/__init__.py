"""`python -m nsa <command>`: one command line for everything the app does.

Each module listed in `COMMAND_MODULES` defines `add_commands(subparsers)`, which registers one or more
subcommands and sets `func=<callable(args) -> int>` on each. Modules keep heavy imports (torch,
transformers, lm_eval) inside their functions so `--help` and argument errors stay instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ["prune", "evaluate", "attribute", "jobs", "study", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"nsa.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"nsa.cli.{name}":  # command not built yet
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from nsa.errors import NSAError
    from pruners.errors import PruneError

    try:
        return int(args.func(args) or 0)
    except (NSAError, PruneError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
