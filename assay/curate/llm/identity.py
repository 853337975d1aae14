"""Who answers a request: the part of the request cache key that is not in the request.

The same model string can name different weights: `openai/x` on two servers, or a LoRA
adapter retrained and registered again under its old name. The cache key therefore holds
the endpoint (`api_base`, normalised so spellings of one URL agree) and, for in-process
backends, a fingerprint of the weights files (the backend's `weights_id(model)`).
A hosted model with no `api_base` has neither, so its keys are what they always were.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_api_base(api_base: str) -> str:
    """Lower-case scheme and host, no default port, no trailing slash, no query."""
    parts = urlsplit(api_base.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, "", ""))


def answered_by(api_base: str | None, weights: str | None) -> dict[str, Any] | None:
    """The identity that goes into the cache key (None when there is nothing to add)."""
    identity: dict[str, Any] = {}
    if api_base:
        identity["endpoint"] = normalise_api_base(api_base)
    if weights:
        identity["weights"] = weights
    return identity or None
