"""Rate limits: token buckets over requests and tokens per minute, and a concurrency cap.

A request reserves one request and its estimated tokens before it is sent; once the
provider reports usage, the difference between the estimate and the real count goes back
to (or comes out of) the buckets. Output tokens are estimated from the mean of what has
been seen so far. Providers that send `x-ratelimit-*` headers (OpenAI, vLLM behind a
gateway, Anthropic's `anthropic-ratelimit-*`) set the limits the user left open and pull
each bucket's level down to what the provider says remains.

Asyncio primitives are bound to one event loop; the executor starts a fresh loop per
segment, so a `Limiter` is created per loop by the client (`RateLimits` is the plain
configuration).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    """Limits for one model endpoint; None means no limit of that kind."""

    rpm: float | None = None
    tpm: float | None = None  # input + output tokens
    input_tpm: float | None = None
    output_tpm: float | None = None
    # 64 requests in flight saturates a 100 req/s limit at up to ~600 ms latency without
    # opening more sockets than a laptop or a small vLLM server handles comfortably.
    max_concurrency: int = 64
    # a bucket holds at most this many seconds of its rate: small bursts are fine, but a
    # full minute's worth at start would double the rate seen over the first minute
    burst_s: float = 1.0


class TokenBucket:
    """Continuous refill at `rate_per_min`; a take larger than the level waits, then goes
    into debt so that requests bigger than the burst capacity still pass."""

    def __init__(self, rate_per_min: float, burst_s: float) -> None:
        self.set_rate(rate_per_min, burst_s)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def set_rate(self, rate_per_min: float, burst_s: float) -> None:
        self.rate = rate_per_min / 60.0
        self.capacity = max(1.0, self.rate * burst_s)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float) -> float:
        need = min(amount, self.capacity) - self.level
        return need / self.rate if need > 0 else 0.0

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class Limiter:
    """Admits requests under every configured bucket and the concurrency cap (one loop)."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.concurrency = asyncio.Semaphore(limits.max_concurrency)
        self._lock = asyncio.Lock()  # FIFO: waiters are admitted in arrival order
        self.buckets: dict[str, TokenBucket] = {}
        for kind, rate in (
            ("requests", limits.rpm),
            ("tokens", limits.tpm),
            ("input", limits.input_tpm),
            ("output", limits.output_tpm),
        ):
            if rate:
                self.buckets[kind] = TokenBucket(rate, limits.burst_s)
        self._from_headers: set[str] = set()
        self._out_seen = 0
        self._out_total = 0

    def estimate_output(self, max_tokens: int | None) -> float:
        """Mean output seen so far; before any, a quarter of max_tokens (or 256)."""
        if self._out_seen:
            mean = self._out_total / self._out_seen
            return min(mean, max_tokens) if max_tokens else mean
        return max_tokens / 4 if max_tokens else 256.0

    async def acquire(self, input_tokens: float, output_tokens: float) -> None:
        """Wait until one request with these estimated tokens fits every bucket."""
        if not self.buckets:
            return
        amounts = {
            "requests": 1.0,
            "tokens": input_tokens + output_tokens,
            "input": input_tokens,
            "output": output_tokens,
        }
        async with self._lock:
            while True:
                now = time.monotonic()
                wait = 0.0
                for kind, bucket in self.buckets.items():
                    bucket.refill(now)
                    wait = max(wait, bucket.wait_time(amounts[kind]))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            for kind, bucket in self.buckets.items():
                bucket.level -= amounts[kind]

    def settle(
        self,
        reserved_in: float,
        reserved_out: float,
        input_tokens: int | None,
        output_tokens: int | None,
        sample: bool = True,
    ) -> None:
        """Return (or charge) the difference between reserved and reported tokens.

        None means "not reported" (the reservation stands); `sample=False` (a failed try)
        keeps the output count out of the running estimate of output sizes.
        """
        if output_tokens is not None and sample:
            self._out_seen += 1
            self._out_total += output_tokens
        used_in = reserved_in if input_tokens is None else input_tokens
        used_out = reserved_out if output_tokens is None else output_tokens
        delta = {
            "tokens": reserved_in + reserved_out - used_in - used_out,
            "input": reserved_in - used_in,
            "output": reserved_out - used_out,
        }
        for kind, diff in delta.items():
            bucket = self.buckets.get(kind)
            if bucket is not None:
                bucket.give_back(diff)

    def observe_headers(self, headers: dict[str, str]) -> None:
        """Adopt provider limits the user left open; sync levels down to what remains."""
        if not headers:
            return
        for kind, limit_names, remaining_names in _HEADER_NAMES:
            limit = _first_number(headers, limit_names)
            if limit and limit > 0 and kind not in self._configured():
                bucket = self.buckets.get(kind)
                if bucket is None:
                    self.buckets[kind] = TokenBucket(limit, self.limits.burst_s)
                elif kind in self._from_headers and bucket.rate * 60 != limit:
                    bucket.set_rate(limit, self.limits.burst_s)
                self._from_headers.add(kind)
            remaining = _first_number(headers, remaining_names)
            bucket = self.buckets.get(kind)
            if remaining is not None and bucket is not None:
                bucket.level = min(bucket.level, remaining)

    def _configured(self) -> set[str]:
        lim = self.limits
        names = {"requests": lim.rpm, "tokens": lim.tpm, "input": lim.input_tpm}
        names["output"] = lim.output_tpm
        return {k for k, v in names.items() if v}


_HEADER_NAMES = (
    (
        "requests",
        ("x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit"),
        ("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining"),
    ),
    (
        "tokens",
        ("x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit"),
        ("x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining"),
    ),
    (
        "input",
        ("anthropic-ratelimit-input-tokens-limit",),
        ("anthropic-ratelimit-input-tokens-remaining",),
    ),
    (
        "output",
        ("anthropic-ratelimit-output-tokens-limit",),
        ("anthropic-ratelimit-output-tokens-remaining",),
    ),
)


def _first_number(headers: dict[str, str], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = headers.get(name)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                continue
    return None
