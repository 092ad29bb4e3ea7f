"""Is the Hugging Face hub reachable? A quick check before anything waits on it.

transformers and datasets retry an unreachable hub for tens of seconds per file before they
fail. castlib asks first: the hub is *unreachable* when ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE``) is set, or when one TCP connection to the
host of ``HF_ENDPOINT`` (default ``https://huggingface.co``) fails within ``timeout`` seconds.
Then model loading uses only the local cache and ``castlib data fetch`` fails at once, both
with a message that says the hub is unreachable and why.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

__all__ = ["DEFAULT_ENDPOINT", "HubUnreachableError", "endpoint", "unreachable_reason"]

DEFAULT_ENDPOINT = "https://huggingface.co"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = {"1", "on", "yes", "true"}


class HubUnreachableError(ConnectionError):
    """The Hugging Face hub cannot be reached (offline mode, no network, or a bad endpoint)."""


def endpoint() -> str:
    """The hub endpoint in use: ``$HF_ENDPOINT`` or https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_ENDPOINT


def unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (a short sentence), or None when it answers.

    Offline variables are read from the environment at call time; otherwise one TCP connection
    to the endpoint's host and port is tried (no HTTP request, no retries)."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]} is set (offline mode)"
    url = endpoint()
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return f"HF_ENDPOINT={url!r} is not a URL"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"cannot connect to {url} ({host}:{port}: {err.strerror or err})"
