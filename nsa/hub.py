"""Fail fast when the Hugging Face hub cannot be reached — decided where a hub id is first resolved.

transformers, huggingface_hub and datasets retry an unreachable hub for 20-45 s. `ensure_offline_if_unreachable()`
probes the hub once per process (a TCP connect with a short timeout) and, when it is unreachable, switches
those libraries to offline mode on the spot (their environment variables and their already-imported
settings), so a hub id that is not cached fails at once with a clear message. Nothing happens on import:
`import nsa` touches no network. `NSA_OFFLINE=1` forces offline mode, `NSA_OFFLINE=0` skips the probe.
"""
from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"
_PROBED: bool | None = None
_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when a TCP connection to the hub opens within `timeout` seconds (probed once per process)."""
    global _PROBED
    if _PROBED is None:
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout):
                _PROBED = True
        except OSError:
            _PROBED = False
    return _PROBED


def ensure_offline_if_unreachable() -> bool:
    """Switch the HF libraries to offline mode when the hub is unreachable; returns True when offline."""
    forced = os.environ.get("NSA_OFFLINE")
    if forced == "0":
        return is_offline()
    if not (forced == "1" or is_offline() or not hub_reachable()):
        return False
    for var in _VARIABLES:
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import datasets.config
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    return True


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"
