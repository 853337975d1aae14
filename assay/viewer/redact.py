"""Secrets never leave the server: every string the viewer renders or stores passes here.

Redacted: values of environment variables whose names say they are secrets (`*_KEY`,
`*_TOKEN`, `*_SECRET`, `*PASSWORD*`), the viewer's own access token, and text shaped like
common credentials (OpenAI/Anthropic/HF/GitHub/Slack/AWS keys, `Bearer ...`, and
`api_key=...`-style assignments).
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "[redacted]"

_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
_PATTERNS = [
    re.compile(r"\b(?:sk|pk|rk)-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/\-]{8,}=*"),
    # api_key: "...", "authorization": "...", password=..., token = ...
    re.compile(
        r"""(?ix)(["']?(?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password|
        authorization|x-api-key)["']?\s*[:=]\s*["']?)([^"'\s,;}]{4,})"""
    ),
]

_extra: set[str] = set()
_cache: tuple[int, list[str]] | None = None


def add_secret(value: str | None) -> None:
    """Also redact this literal value (the viewer's token)."""
    global _cache
    if value and len(value) >= 4:
        _extra.add(value)
        _cache = None


def _env_secrets() -> list[str]:
    # scanning os.environ costs ~0.2 ms: done again only when the environment changes size
    global _cache
    if _cache is None or _cache[0] != len(os.environ):
        values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8}
        _cache = (len(os.environ), sorted(values | _extra, key=len, reverse=True))
    return _cache[1]


def redact(text: str) -> str:
    """`text` with every secret replaced by `[redacted]`."""
    if not text:
        return text
    for value in _env_secrets():
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        else:
            text = pattern.sub(MASK, text)
    return text


def redact_value(value: Any) -> Any:
    """Redact strings inside nested lists and dicts (what a Parquet row becomes)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
