"""Progress reporting, one mechanism for the whole project.

Every long step reports `pruners.ProgressEvent(fraction, message, stage)` to a callback (the CLI's bar, the
job store, the app). `Report` maps a step's own 0..1 into a sub-range of its caller's; `Stages` hands out
consecutive sub-ranges to the named steps of one task.
"""
from __future__ import annotations

from typing import Any, Callable

from pruners import ProgressEvent

Callback = Callable[[ProgressEvent], None]


class Report:
    """A progress callback for one step: `report(fraction, message)` (or `report(event)`) reaches `callback` as
    `ProgressEvent(lo + (hi - lo) * fraction, message, stage)`; None as callback makes it a no-op."""

    def __init__(self, callback: Callback | None, lo: float = 0.0, hi: float = 1.0, stage: str = ""):
        self.callback, self.lo, self.hi, self.stage = callback, lo, hi, stage
        self.last = 0.0

    def __call__(self, fraction: Any = 0.0, message: str = "") -> None:
        if isinstance(fraction, ProgressEvent) or hasattr(fraction, "fraction"):
            fraction, message = fraction.fraction, getattr(fraction, "message", "") or message
        f = min(max(float(fraction or 0.0), 0.0), 1.0)
        self.last = f
        if self.callback is not None:
            self.callback(ProgressEvent(self.lo + (self.hi - self.lo) * f, str(message or ""), self.stage))

    def part(self, lo: float, hi: float, stage: str | None = None) -> "Report":
        span = self.hi - self.lo
        return Report(self.callback, self.lo + span * lo, self.lo + span * hi, self.stage if stage is None else stage)

    def log(self, message: str) -> None:
        """A message at the current fraction (e.g. "cache entry bad: recomputing")."""
        self(self.last, message)


class Stages:
    """Consecutive sub-ranges of one task's progress: `stages.step("validation", 0.3)` is the next 30%."""

    def __init__(self, callback: Callback | Report | None, stage: str = ""):
        self.parent = callback if isinstance(callback, Report) else Report(callback, stage=stage)
        self.cursor = 0.0

    def step(self, name: str, weight: float) -> Report:
        lo = min(self.cursor, 1.0)
        self.cursor += weight
        return self.parent.part(lo, min(self.cursor, 1.0))

    def log(self, message: str) -> None:
        self.parent.log(message)
