"""What providers say about rate limits: `x-ratelimit-*` (OpenAI, vLLM behind a gateway)
and `anthropic-ratelimit-*` headers, OpenAI's reset durations, and which 429s are about
quota (limits.py acts on them)."""

from __future__ import annotations

import re
from typing import Any

HEADER_NAMES = (
    (
        "requests",
        ("x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit"),
        ("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining"),
        ("x-ratelimit-reset-requests",),
    ),
    (
        "tokens",
        ("x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit"),
        ("x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining"),
        ("x-ratelimit-reset-tokens",),
    ),
    (
        "input",
        ("anthropic-ratelimit-input-tokens-limit",),
        ("anthropic-ratelimit-input-tokens-remaining",),
        (),
    ),
    (
        "output",
        ("anthropic-ratelimit-output-tokens-limit",),
        ("anthropic-ratelimit-output-tokens-remaining",),
        (),
    ),
)


def first_number(headers: dict[str, str], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = headers.get(name)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                continue
    return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def first_duration(headers: dict[str, str], names: tuple[str, ...]) -> float | None:
    """OpenAI's reset headers: "1s", "6m0s", "120ms" (or plain seconds)."""
    for name in names:
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            parts = _DURATION.findall(value)
            if parts:
                return sum(float(n) * _UNIT_S[u] for n, u in parts)
    return None


def is_rate_limit(exc: BaseException, status: int | None) -> bool:
    """A 429 that is about quota (not one that says quota remains: an overload, a fault)."""
    if status != 429:
        return False
    headers = getattr(exc, "headers", None) or getattr(exc, "litellm_response_headers", None)
    if not headers:
        return True
    try:
        values = [headers.get(n) for n in ("x-ratelimit-remaining-requests",)]
        values += [headers.get("x-ratelimit-remaining-tokens")]
    except AttributeError:
        return True
    known = [float(v) for v in values if v is not None and _is_number(v)]
    return not known or min(known) <= 0


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
