"""Fail fast, with ftctl's own message, when the Hugging Face hub cannot be reached.

Without this, huggingface_hub and datasets retry an unreachable hub for tens of seconds and print their
own noise before failing. Two checks, before any hub call: the hub is switched off (HF_HUB_OFFLINE and
friends), or a TCP connection to the hub's host (HF_ENDPOINT, default huggingface.co) does not open
within a few seconds.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
CONNECT_TIMEOUT_S = 3.0


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def unreachable_reason(timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now (None when a connection to it opens)."""
    for name in OFFLINE_VARIABLES:
        if _truthy(os.environ.get(name)):
            return f"hub access is switched off ({name}={os.environ[name]})"
    # The libraries' own offline switches, when a caller set them in this process.
    for module in ("huggingface_hub.constants", "datasets.config"):
        if getattr(sys.modules.get(module), "HF_HUB_OFFLINE", False) is True:
            return f"hub access is switched off ({module}.HF_HUB_OFFLINE)"
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"no connection to {host}:{port} ({exc.strerror or type(exc).__name__})"
