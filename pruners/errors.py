"""Errors the pruning engine raises for bad input (the message says what was wrong and what to do)."""
from __future__ import annotations


class PruneError(ValueError):
    """Invalid pruning input: configuration, calibration tokens, or an unsupported model.

    `field` names the setting at fault ("sparsity", "options.alpha"); `str(err)` is "<field>: <problem>". Each
    front end names the field its own way before the same problem text (`err.at("prune.sparsity")` in a job
    spec, `err.at("--sparsity")` on the command line), so every entry point shows one wording.
    """

    def __init__(self, problem: str, field: str | None = None):
        self.problem, self.field = problem, field
        super().__init__(f"{field}: {problem}" if field else problem)

    def at(self, where: str | None) -> str:
        """The message with the field named as the caller names it (`where`; None keeps it unnamed)."""
        return f"{where}: {self.problem}" if where else self.problem

    def nested(self, prefix: str) -> "PruneError":
        """The same error one level down (e.g. an option's error seen from the config: "options." + name)."""
        return PruneError(self.problem, f"{prefix}{self.field}" if self.field else prefix.rstrip("."))
