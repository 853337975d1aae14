"""Rate limits: sliding windows over requests and tokens per minute, and a concurrency cap.

A bucket admits at most `burst_s` seconds of its rate in any window of `burst_s` seconds
(default one second). A server that enforces a per-minute quota over one-second windows,
as OpenAI documents, therefore never sees more than its quota from a client within it,
not even at start (a token bucket that starts full sends two seconds' worth in the first).

A request reserves one request and its estimated tokens before it is sent; once the
provider reports usage, the difference between the estimate and the real count goes back
to (or comes out of) its reservation. Output tokens are estimated from the mean seen so far.

The limits adapt to the server (see `observe_headers` and `rate_limited`):
- the effective limit is the lower of the configured one and the provider's
  `x-ratelimit-limit-*` (`anthropic-ratelimit-*`); `remaining` with `reset` holds the
  bucket down until the server's window resets;
- a rate-limit 429 pauses every request to the endpoint (its `retry-after`, or one second),
  then lets the rate come back gradually (half the limit, back to full over `recover_s`).

`limiter_for(model, api_base, limits)` gives one Limiter per (model, endpoint) per process,
shared by every stage and pipeline segment. Its state is plain data; the asyncio lock and
concurrency semaphore it waits on are made per event loop (the executor runs one loop per
segment), so the concurrency cap holds per loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from assay.curate.llm.rate_headers import HEADER_NAMES, first_duration, first_number


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
    # at most this many seconds of quota in any window this long (see the module doc)
    burst_s: float = 1.0
    # after a rate-limit 429 the rate restarts at half and is back to full after this long
    recover_s: float = 10.0


# an entry counts this much longer than its window: requests sent one window apart can
# arrive closer together than that (network and scheduling jitter), and a server counting
# per fixed window would then see one too many
_MARGIN_S = 0.015
# aligned to a server's fixed windows: start sending this long after its boundary, stop
# this long before the next (a request sent late in a window must not land in the next)
_AFTER_S, _BEFORE_S = 0.02, 0.05


class WindowBucket:
    """At most `capacity` (= rate x window) taken in any `window` seconds: a sliding log.

    A take larger than the capacity waits for an empty window, then passes (so requests
    bigger than one window's quota still go through, one at a time).

    Once the server's reset headers reveal where its fixed windows start (`align`), takes
    count against the server's window instead: they expire together at its next start,
    and nothing is sent in the last `_BEFORE_S` of a window. Scheduling jitter on the
    client (tens of ms on a loaded machine) then cannot move a request into a window that
    was already full, which a sliding window with a small margin cannot promise.
    """

    def __init__(self, rate_per_min: float, window_s: float) -> None:
        self.log: deque[list[float]] = deque()  # [time, amount]; time -1 once expired
        self.used = 0.0
        # a server window boundary (monotonic time), learnt from reset headers: `boundary`
        # is never before the real one, `early` never after (see `align`)
        self.boundary: float | None = None
        self.early: float | None = None
        self._disagreements = 0
        self.set_rate(rate_per_min, window_s)

    def align(self, reset_s: float, now: float, latency_s: float) -> None:
        """An answer sent `latency_s` ago says the server's window resets in `reset_s`.

        The server counted it somewhere between our send and our receipt, so the boundary
        lies between `now - latency_s + reset_s` and `now + reset_s`: sending starts after
        the latest bound and stops before the earliest one, whichever moment a server
        computes its headers at. Over many answers both bounds tighten.
        """
        if self._disagreements > 3 or not 0 < reset_s <= self.window:
            return
        late, early = now + reset_s, now - latency_s + reset_s
        if self.boundary is None or self.early is None:
            self.boundary, self.early = late, early
            return
        half = self.window / 2
        shift = (late - self.boundary + half) % self.window - half
        if abs(shift) > 0.3:
            # not fixed windows (a token-bucket server's reset): slide instead
            self._disagreements += 1
            if self._disagreements > 3:
                self.boundary = self.early = None
            return
        self.boundary += min(0.0, shift)
        shift = (early - self.early + half) % self.window - half
        self.early += max(0.0, shift)

    def _spread(self) -> float:
        assert self.boundary is not None and self.early is not None
        half = self.window / 2
        # at most half a window: a wider spread would leave no time to send in
        return min(
            half - _BEFORE_S, max(0.0, (self.boundary - self.early + half) % self.window - half)
        )

    def _next_start(self, now: float) -> float:
        assert self.boundary is not None
        start = self.boundary + _AFTER_S
        return start + ((now - start) // self.window + 1) * self.window

    def set_rate(self, rate_per_min: float, window_s: float) -> None:
        self.rate = rate_per_min / 60.0  # per second
        self.window = window_s
        self.capacity = max(1.0, self.rate * window_s)

    @property
    def level(self) -> float:
        """What may still be taken now (negative while in debt)."""
        self.expire(time.monotonic())
        return self.capacity - self.used

    def expire(self, now: float) -> None:
        horizon = now - self.window - _MARGIN_S
        log = self.log
        while log and log[0][0] <= horizon:
            entry = log.popleft()
            self.used -= entry[1]
            entry[0] = -1.0
        if not log:
            self.used = 0.0  # no float drift across millions of takes

    def wait_time(self, amount: float, now: float, scale: float = 1.0) -> float:
        """Seconds until `amount` fits (0 if it fits now); `scale` shrinks the capacity."""
        if self.boundary is not None:
            until = self._next_start(now) - now
            if until < _BEFORE_S + _AFTER_S + self._spread():
                return until  # the end of the server's window: wait for the next
        self.expire(now)
        capacity = max(1.0, self.capacity * scale)
        excess = self.used + min(amount, capacity) - capacity
        if excess <= 1e-9:
            return 0.0
        freed = 0.0
        for stamp, taken in self.log:
            freed += taken
            if freed >= excess - 1e-9:
                return max(1e-3, stamp + self.window + _MARGIN_S - now)
        return self.window

    def _stamp(self, now: float) -> float:
        """When a take at `now` stops counting, less the window (expire's convention)."""
        if self.boundary is None:
            return now
        return self._next_start(now) - self.window - _MARGIN_S

    def take(self, amount: float, now: float) -> list[float]:
        entry = [self._stamp(now), amount]
        self.log.append(entry)
        self.used += amount
        return entry

    def adjust(self, entry: list[float], diff: float) -> None:
        """Give back `diff` of a reservation (negative: charge more), while it counts."""
        if entry[0] >= 0 and diff:
            entry[1] -= diff
            self.used -= diff

    def hold(self, amount: float, until_s: float, now: float) -> None:
        """Count `amount` as taken until `until_s` seconds from now (a server's window)."""
        if amount > 0:
            stamp = (
                self._stamp(now)
                if self.boundary is not None
                else now - self.window + min(until_s, self.window)
            )
            entry = [stamp, amount]
            # keep the log ordered by time: the entry expires when the server's window does
            index = len(self.log)
            while index > 0 and self.log[index - 1][0] > stamp:
                index -= 1
            self.log.insert(index, entry)
            self.used += amount


_KINDS = ("requests", "tokens", "input", "output")


class Limiter:
    """Admits requests under every bucket, the shared pause and the concurrency cap."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.buckets: dict[str, WindowBucket] = {}
        self._configured: dict[str, float] = {}
        self._from_headers: dict[str, float] = {}
        for kind, rate in zip(_KINDS, _rates(limits), strict=True):
            if rate:
                self._configured[kind] = rate
                self.buckets[kind] = WindowBucket(rate, limits.burst_s)
        self._out_seen = 0
        self._out_total = 0
        self.paused_until = 0.0
        self._recover_from = 0.0  # when the last pause ended (the rate climbs from there)
        self.pauses = 0  # rate-limit 429s that paused the endpoint
        self._state = threading.Lock()  # stages in other threads' loops share this state
        self._per_loop: dict[int, tuple[Any, asyncio.Lock, asyncio.Semaphore]] = {}

    # --- configuration ------------------------------------------------------------------

    def configure(self, limits: RateLimits) -> None:
        """Another stage's settings for the same endpoint: the lower limit of each wins."""
        with self._state:
            for kind, rate in zip(_KINDS, _rates(limits), strict=True):
                if rate and rate < self._configured.get(kind, float("inf")):
                    self._configured[kind] = rate
                    self._set(kind)
            if limits.max_concurrency < self.limits.max_concurrency:
                self.limits = replace(self.limits, max_concurrency=limits.max_concurrency)
                self._per_loop.clear()

    def _set(self, kind: str) -> None:
        rates = [r for r in (self._configured.get(kind), self._from_headers.get(kind)) if r]
        rate = min(rates)
        bucket = self.buckets.get(kind)
        if bucket is None:
            self.buckets[kind] = WindowBucket(rate, self.limits.burst_s)
        elif bucket.rate * 60 != rate:
            bucket.set_rate(rate, self.limits.burst_s)

    def _loop_parts(self) -> tuple[asyncio.Lock, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        entry = self._per_loop.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = (loop, asyncio.Lock(), asyncio.Semaphore(self.limits.max_concurrency))
            # a finished loop's primitives are useless; keep only live loops'
            self._per_loop = {k: v for k, v in self._per_loop.items() if not v[0].is_closed()} | {
                id(loop): entry
            }
        return entry[1], entry[2]

    @property
    def concurrency(self) -> asyncio.Semaphore:
        return self._loop_parts()[1]

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of `max_concurrency` places in flight (held for one try only)."""
        async with self._loop_parts()[1]:
            yield

    # --- admission ----------------------------------------------------------------------

    def estimate_output(self, max_tokens: int | None) -> float:
        """Mean output seen so far; before any, a quarter of max_tokens (or 256)."""
        if self._out_seen:
            mean = self._out_total / self._out_seen
            return min(mean, max_tokens) if max_tokens else mean
        return max_tokens / 4 if max_tokens else 256.0

    def _scale(self, now: float) -> float:
        if not self._recover_from or now >= self._recover_from + self.limits.recover_s:
            return 1.0
        return 0.5 + 0.5 * max(0.0, now - self._recover_from) / self.limits.recover_s

    async def acquire(
        self, input_tokens: float, output_tokens: float
    ) -> dict[str, list[float]] | None:
        """Wait until one request with these estimated tokens fits; return its reservation
        (pass it to `settle`)."""
        if not self.buckets and not self.paused_until:
            return None
        amounts = {
            "requests": 1.0,
            "tokens": input_tokens + output_tokens,
            "input": input_tokens,
            "output": output_tokens,
        }
        async with self._loop_parts()[0]:  # FIFO: waiters are admitted in arrival order
            while True:
                with self._state:
                    now = time.monotonic()
                    wait = self.paused_until - now
                    if wait <= 0:
                        scale = self._scale(now)
                        for kind, bucket in self.buckets.items():
                            wait = max(wait, bucket.wait_time(amounts[kind], now, scale))
                    if wait <= 0:
                        return {k: b.take(amounts[k], now) for k, b in self.buckets.items()}
                await asyncio.sleep(wait)

    def settle(
        self,
        reservation: dict[str, list[float]] | None,
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
        if not reservation:
            return
        used_in = reserved_in if input_tokens is None else input_tokens
        used_out = reserved_out if output_tokens is None else output_tokens
        delta = {
            "tokens": reserved_in + reserved_out - used_in - used_out,
            "input": reserved_in - used_in,
            "output": reserved_out - used_out,
        }
        with self._state:
            for kind, diff in delta.items():
                entry = reservation.get(kind)
                if entry is not None:
                    self.buckets[kind].adjust(entry, diff)

    # --- what the server says ---------------------------------------------------------

    def observe_headers(self, headers: dict[str, str], latency_s: float | None = None) -> None:
        """Lower each limit to the provider's; hold buckets to what remains until reset;
        with the answer's `latency_s`, align to the server's windows (WindowBucket)."""
        if not headers:
            return
        with self._state:
            now = time.monotonic()
            for kind, limit_names, remaining_names, reset_names in HEADER_NAMES:
                limit = first_number(headers, limit_names)
                if limit and limit > 0 and self._from_headers.get(kind) != limit:
                    self._from_headers[kind] = limit
                    self._set(kind)
                remaining = first_number(headers, remaining_names)
                bucket = self.buckets.get(kind)
                if remaining is None or bucket is None:
                    continue
                reset = first_duration(headers, reset_names)
                if reset is not None and latency_s is not None:
                    bucket.align(reset, now, latency_s)
                bucket.expire(now)
                extra = bucket.capacity - bucket.used - max(0.0, remaining)
                if extra > 0:
                    bucket.hold(extra, bucket.window if reset is None else reset, now)

    def rate_limited(self, retry_after_s: float | None) -> None:
        """A rate-limit 429: pause every request to this endpoint, then recover gradually."""
        with self._state:
            now = time.monotonic()
            until = now + (1.0 if retry_after_s is None else min(retry_after_s, 120.0))
            if until > self.paused_until:
                self.paused_until = until
                self._recover_from = until
                self.pauses += 1


def _rates(limits: RateLimits) -> tuple[float | None, ...]:
    return (limits.rpm, limits.tpm, limits.input_tpm, limits.output_tpm)


_limiters: dict[tuple[str, str | None], Limiter] = {}
_registry_lock = threading.Lock()


def limiter_for(model: str, endpoint: str | None, limits: RateLimits) -> Limiter:
    """The process's Limiter for (model, endpoint); later callers can only lower limits."""
    with _registry_lock:
        limiter = _limiters.get((model, endpoint))
        if limiter is None:
            limiter = _limiters[(model, endpoint)] = Limiter(limits)
        else:
            limiter.configure(limits)
        return limiter


def reset_limiters() -> None:
    """Forget every endpoint's learned limits (tests; a long-lived process after a quota
    change)."""
    with _registry_lock:
        _limiters.clear()
