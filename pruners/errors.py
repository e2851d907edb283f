"""Errors the pruning engine raises for bad input (the message says what was wrong and what to do)."""


class PruneError(ValueError):
    """Invalid pruning input: configuration, calibration tokens, or an unsupported model."""
