"""The command line's progress bar: a tqdm bar on stderr fed by `pruners.ProgressEvent`s."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Bar:
    """Shows the event's fraction, stage and message; redraws at most four times a second."""

    def __init__(self, desc: str):
        self.bar = tqdm(total=100, desc=desc, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}")
        self.shown = 0.0
        self.stage = None

    def __call__(self, event) -> None:
        now = time.time()
        if event.stage == self.stage and now - self.shown < 0.25 and event.fraction < 1.0:
            return
        self.shown, self.stage = now, event.stage
        self.bar.n = round(100 * event.fraction, 1)
        if event.stage:
            self.bar.set_description(event.stage)
        self.bar.set_postfix_str((event.message or "")[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
