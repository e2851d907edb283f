"""`python -m nsa <command>`: one command line for everything the app does.

Each module in `COMMANDS` defines `add_commands(subparsers)`, which registers one or more subcommands and sets
`func=<callable(args) -> int>` on each. An `NSAError` or `PruneError` prints `error: <message>` and exits 2.
"""
from __future__ import annotations

import argparse
import sys

from nsa.cli import attribute, demo, evaluate, jobs, neurons, prune, restore, study
from nsa.errors import NSAError
from pruners import PruneError

COMMANDS = (prune, evaluate, attribute, restore, jobs, neurons, study, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nsa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module in COMMANDS:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (NSAError, PruneError) as err:
        print(f"error: {_cap(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _cap(text: str, limit: int = 2000) -> str:
    """An error message never prints a huge input whole."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
