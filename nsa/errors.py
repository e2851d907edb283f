"""User-facing errors.

Anything raised as `NSAError` is a problem with the user's input or environment (a bad path, an unknown
dataset, a hub id that is not cached while offline). The CLI prints its message and exits with status 2;
the app shows it as a readable message. Everything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class NSAError(Exception):
    """A clear, specific problem the user can fix: the message says what was wrong and what to do.

    `field` (optional) names the setting at fault; `at(where)` renames it the caller's way, as
    `pruners.PruneError` does, so the CLI, a job spec and the app show one wording.
    """

    def __init__(self, problem: str, field: str | None = None):
        self.problem, self.field = problem, field
        super().__init__(f"{field}: {problem}" if field else problem)

    def at(self, where: str | None) -> str:
        return f"{where}: {self.problem}" if where else self.problem
