"""User-facing errors.

Anything raised as `NSAError` is a problem with the user's input or environment (a bad path, an unknown
dataset, a hub id that is not cached while offline). The CLI prints its message and exits with status 2;
the app shows it as a readable message. Everything else is a bug and keeps its traceback.
"""


class NSAError(Exception):
    """A clear, specific problem the user can fix: the message says what was wrong and what to do."""
