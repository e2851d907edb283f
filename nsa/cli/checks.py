"""Checks the commands share, run before any model loads."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nsa.errors import NSAError


def check_out(out: str | Path, flag: str = "--out") -> Path:
    """The output folder must be a folder we can write: checked before the work, not after minutes of it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NSAError(f"{flag} {out} is a file: give a folder")
    try:  # create it and write a probe file: permission bits alone say nothing for root or special file systems
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise NSAError(f"{flag} {out}: cannot write there ({err.strerror or err})") from None
    return out
