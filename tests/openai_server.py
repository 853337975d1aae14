"""A fake OpenAI chat-completions server on 127.0.0.1 for tests and the benchmark.

A real HTTP server (aiohttp, in a thread with its own event loop, or its own process via
`python tests/openai_server.py`) that answers POST /v1/chat/completions and can inject:
latency (fixed plus uniform jitter), 429 with `retry-after`, 500, bodies cut off mid-JSON,
schema-violating answers (through the responder), rate-limit headers, and hangs. It counts
billed requests (a 200 response sent, whatever its body) per request hash, and keeps the
arrival time of every request.

With `quota_rpm`, the server enforces a per-minute quota over fixed windows of
`quota_window_s` (one second by default, as OpenAI documents): a request beyond
`quota_rpm / 60 * quota_window_s` in its window gets a 429 with `retry-after` (the time to
the next window) and `x-ratelimit-remaining-requests: 0`, counted in `quota_429s`. Every
answer then carries `x-ratelimit-limit-requests`, `-remaining-requests` and
`-reset-requests` (injected faults included), as OpenAI's do.

Faults are chosen per request by `script` (hash, attempt number) -> fault name or None, or
at random with `mix` probabilities (seeded). Fault names: "429" or any other status code such as "500", "408", "400",
"malformed", "hang".

    with FakeOpenAI(latency_s=0.01, script=lambda h, attempt: "429" if attempt == 1 else None) as s:
        ... litellm / assay against s.base_url ...
        s.billed  # {hash: count}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

Responder = Callable[[dict[str, Any]], "str | dict[str, Any]"]


def request_hash(body: dict[str, Any]) -> str:
    """What identifies a request for billing: its whole body except transport options."""
    clean = {k: v for k, v in body.items() if k not in ("stream", "timeout")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]


def echo(body: dict[str, Any]) -> str:
    users = [m for m in body["messages"] if m.get("role") == "user"]
    return f"echo: {users[-1]['content'] if users else ''}"


class FakeOpenAI:
    def __init__(
        self,
        responder: Responder = echo,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        script: Callable[[str, int], str | None] | None = None,
        mix: dict[str, float] | None = None,
        retry_after_s: float = 0.05,
        headers: dict[str, str] | None = None,
        hang_s: float = 3600.0,
        seed: int = 0,
        port: int = 0,
        quote_key_in_errors: bool = False,
        error_detail: str | None = None,
        quota_rpm: float | None = None,
        quota_window_s: float = 1.0,
        charset: str = "utf-8",
    ) -> None:
        self.charset = charset  # of answer bodies, declared in their content type
        self.quota_rpm = quota_rpm
        self.quota_window_s = quota_window_s
        self.quota_429s = 0
        self.quota_429_at: list[float] = []  # arrival times of the requests refused
        self._window = (-1, 0)  # (window index, requests counted in it)
        self._t0 = time.monotonic()
        self.quote_key_in_errors = quote_key_in_errors
        # appended to every injected error message (e.g. a provider echoing some other key)
        self.error_detail = error_detail
        self.responder = responder
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.script = script
        self.mix = mix or {}
        self.retry_after_s = retry_after_s
        self.headers = headers or {}
        self.hang_s = hang_s
        self.rng = random.Random(seed)
        self.port = port
        self.billed: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.bodies: list[dict[str, Any]] = []
        self.raw_headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeOpenAI:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # --- counts -----------------------------------------------------------------------

    @property
    def total_billed(self) -> int:
        return sum(self.billed.values())

    @property
    def rebilled(self) -> int:
        return sum(c - 1 for c in self.billed.values() if c > 1)

    def stats(self) -> dict[str, Any]:
        return {
            "billed": dict(self.billed),
            "total_billed": self.total_billed,
            "rebilled": self.rebilled,
            "attempts": sum(self.attempts.values()),
            "faults": dict(self.faults),
            "quota_429s": self.quota_429s,
            "in_flight": self.in_flight,
        }

    # --- handlers ---------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def _fault(self, key: str, attempt: int) -> str | None:
        if self.script is not None:
            return self.script(key, attempt)
        roll = self.rng.random()
        for name, p in self.mix.items():
            if roll < p:
                return name
            roll -= p
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    def _quota(self, now: float) -> tuple[bool, dict[str, str]]:
        """Count a request against its window: (over quota?, rate headers to send)."""
        if self.quota_rpm is None:
            return False, {}
        per_window = int(self.quota_rpm / 60 * self.quota_window_s)
        index = int((now - self._t0) // self.quota_window_s)
        count = self._window[1] + 1 if self._window[0] == index else 1
        self._window = (index, count)
        reset = (index + 1) * self.quota_window_s - (now - self._t0)
        headers = {
            "x-ratelimit-limit-requests": str(int(self.quota_rpm)),
            "x-ratelimit-remaining-requests": str(max(0, per_window - count)),
            "x-ratelimit-reset-requests": f"{max(1, round(reset * 1000))}ms",
        }
        return count > per_window, headers

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        self.arrivals.append(now)
        over, quota_headers = self._quota(now)
        body = await request.json()
        self.bodies.append(body)
        self.raw_headers.append(dict(request.headers))
        key = request_hash(body)
        self.attempts[key] += 1
        fault = self._fault(key, self.attempts[key])
        if fault:
            self.faults[fault] += 1
        if over:
            self.quota_429s += 1
            self.quota_429_at.append(now)
            headers = {**self.headers, **quota_headers}
            headers["retry-after"] = (
                f"{int(quota_headers['x-ratelimit-reset-requests'][:-2]) / 1000}"
            )
            error = {"error": {"message": "quota exceeded", "type": "requests", "code": 429}}
            return web.json_response(error, status=429, headers=headers)
        delay = self.latency_s + (self.rng.uniform(-1, 1) * self.jitter_s if self.jitter_s else 0)
        if delay > 0:
            await asyncio.sleep(max(0.0, delay))
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        if fault == "429":
            headers = {"retry-after": str(self.retry_after_s), **self.headers, **quota_headers}
            error = {"error": {"message": "rate limited", "type": "rate_limit", "code": 429}}
            return web.json_response(error, status=429, headers=headers)
        if fault and fault.isdigit():
            message = f"injected {fault}"
            if self.quote_key_in_errors:  # as some providers do: "invalid key sk-..."
                message += f" for key {request.headers.get('Authorization', '')[7:]}"
            if self.error_detail:
                message += f" ({self.error_detail})"
            error = {"error": {"message": message, "type": "server_error"}}
            return web.json_response(error, status=int(fault), headers=quota_headers)
        answer = self.responder(body)
        message = {"role": "assistant", "content": answer} if isinstance(answer, str) else answer
        message.setdefault("role", "assistant")
        content = message.get("content") or ""
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body["messages"])
        payload = {
            "id": f"chatcmpl-{key}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4 + 1,
                "completion_tokens": len(content) // 4 + 1,
                "total_tokens": prompt_chars // 4 + len(content) // 4 + 2,
            },
        }
        text = json.dumps(payload, ensure_ascii=False)
        self.billed[key] += 1
        if fault == "malformed":
            text = text[: len(text) // 2]  # cut off mid-JSON
        headers = {**self.headers, **quota_headers}
        return web.Response(
            text=text, content_type="application/json", charset=self.charset, headers=headers
        )


def json_answers(violation_rate: float, seed: int = 0) -> Responder:
    """A responder for JSON-mode benchmarks. It fills the request's `response_format`
    schema (string fields get the first user message, integer fields its length; with no
    schema it answers `{"question": ..., "answer": <int>}`), except that a share
    `violation_rate` of answers, drawn per request (re-asks and retries included) from a
    seeded generator, write `"many"` into the integer field `answer`, breaking the schema.
    Answers to other schemas (a client's capability probe) are never broken."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def respond(body: dict[str, Any]) -> str:
        users = [m for m in body["messages"] if m.get("role") == "user"]
        question = str(users[0]["content"]) if users else ""
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        props = schema.get("properties") or {
            "question": {"type": "string"},
            "answer": {"type": "integer"},
        }
        value: dict[str, Any] = {}
        for name, spec in props.items():
            kind = spec.get("type") if isinstance(spec, dict) else None
            value[name] = len(question) if kind in ("integer", "number") else question
        if "answer" in value and isinstance(value["answer"], int):
            with lock:
                broken = rng.random() < violation_rate
            if broken:
                value["answer"] = "many"
        return json.dumps(value)

    return respond


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--mix", default="", help="e.g. 429=0.1,500=0.05,malformed=0.03")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--hang", type=float, default=3600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quota-rpm", type=float, default=None)
    parser.add_argument(
        "--json-violation",
        type=float,
        default=None,
        help="answer JSON (see json_answers), this share of answers breaking the schema",
    )
    args = parser.parse_args()
    mix = {k: float(v) for k, v in (p.split("=") for p in args.mix.split(",") if p)}
    responder = (
        echo if args.json_violation is None else json_answers(args.json_violation, args.seed)
    )
    server = FakeOpenAI(
        responder=responder,
        latency_s=args.latency,
        jitter_s=args.jitter,
        mix=mix,
        retry_after_s=args.retry_after,
        hang_s=args.hang,
        seed=args.seed,
        port=args.port,
        quota_rpm=args.quota_rpm,
    )
    with server:
        print(server.port, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
