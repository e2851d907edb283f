"""Fail fast when the Hugging Face hub cannot be reached.

transformers and datasets retry an unreachable hub for 20-45 s unless `HF_HUB_OFFLINE` /
`HF_DATASETS_OFFLINE` are set *before* they are imported. `configure()` probes the hub once (a TCP
connect with a short timeout) and sets offline mode when it is unreachable, so a hub id that is not
cached fails at once with a clear message instead of hanging a page. `NSA_OFFLINE=1` forces offline
mode, `NSA_OFFLINE=0` skips the probe.
"""
from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"
_PROBED: bool | None = None


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


def configure() -> bool:
    """Set the libraries' offline switches when the hub is unreachable. Returns True when offline."""
    forced = os.environ.get("NSA_OFFLINE")
    if forced == "0":
        return False
    offline = forced == "1" or os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()
    if offline:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(var, "1")
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return offline


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"
