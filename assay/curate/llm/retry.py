"""Which failures to retry, how long to wait, and the tenacity loop around one request.

Retried: 429 and 408, every 5xx, timeouts, connection errors and bodies that are not
valid JSON (a truncated response). Never retried: any other 4xx (a bad request stays bad).
The wait is exponential with jitter, or the provider's `retry-after` when it sends one.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from assay.curate.errors import AssayError
from assay.curate.llm.types import InvalidRequestError


@dataclass(frozen=True)
class RetryPolicy:
    # 6 tries with 1 s doubling to 30 s rides out about a minute of provider trouble
    # (a 429 burst or a restarting vLLM server) before a row is marked failed.
    max_attempts: int = 6
    initial_wait_s: float = 1.0
    max_wait_s: float = 30.0
    jitter_s: float = 1.0
    # never sleep longer than this on a provider's retry-after
    max_retry_after_s: float = 120.0


class ResponseError(Exception):
    """A response came back but could not be used (e.g. a body that is not JSON)."""

    status_code: int | None = None


def status_of(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


_BUGS = (
    AttributeError,
    TypeError,
    KeyError,
    IndexError,
    NameError,
    AssertionError,
    NotImplementedError,
    RecursionError,
)


def is_retryable(exc: BaseException) -> bool:
    """429/408/5xx and failures without a status (timeouts, connections, bad bodies)."""
    if isinstance(
        exc, asyncio.CancelledError | KeyboardInterrupt | AssayError | InvalidRequestError
    ):
        return False  # an AssayError is a configuration error: trying again cannot help
    if isinstance(exc, TimeoutError | json.JSONDecodeError | ResponseError):
        return True
    if isinstance(exc, _BUGS):
        return False  # a bug in a backend or a parser answers the same way every time
    code = status_of(exc)
    if code is None:
        return True
    return code in (408, 429) or code >= 500


def retry_after(exc: BaseException) -> float | None:
    """Seconds from a `retry-after` / `retry-after-ms` header on the failure, if any."""
    sources = (
        getattr(exc, "headers", None),
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    )
    value = None
    for headers in sources:
        if not headers:
            continue
        try:
            ms = headers.get("retry-after-ms")
            if ms is not None:
                return max(0.0, float(ms) / 1000.0)
            value = headers.get("retry-after")
        except (AttributeError, TypeError, ValueError):
            continue
        if value is not None:
            break
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class _Wait:
    def __init__(self, policy: RetryPolicy, tries_done: int = 0) -> None:
        self.policy = policy
        self.tries_done = tries_done

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return wait_after(self.policy, exc, state.attempt_number + self.tries_done)


def wait_after(policy: RetryPolicy, exc: BaseException | None, attempt: int) -> float:
    """Seconds to wait after failed try number `attempt` (1-based)."""
    after = retry_after(exc) if exc is not None else None
    if after is not None:
        # a little jitter so that every request told "1 s" does not return at once
        return min(after, policy.max_retry_after_s) + random.uniform(0, policy.jitter_s / 4)
    backoff = policy.initial_wait_s * 2 ** (attempt - 1)
    return min(policy.max_wait_s, backoff) + random.uniform(0, policy.jitter_s)


def first_wait(policy: RetryPolicy, exc: BaseException) -> float:
    return wait_after(policy, exc, 1)


def retrying(policy: RetryPolicy, tries_done: int = 0) -> AsyncRetrying:
    """A tenacity controller for the tries after `tries_done` already failed ones.

    Call `.copy()` per request: the controller keeps per-call state.
    """
    return AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.max_attempts - tries_done)),
        wait=_Wait(policy, tries_done),
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )


def describe_error(exc: BaseException) -> str:
    code = status_of(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    prefix = f"{type(exc).__name__}" + (f" ({code})" if code else "")
    return f"{prefix}: {text[:300]}" if text else prefix
