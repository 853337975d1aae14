"""LLMClient against a real local HTTP server: retries, rate limits, order, secrets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from openai_server import FakeOpenAI

from assay.curate.llm.client import LLMClient, LLMSettings, register_backend
from assay.curate.llm.limits import Limiter, RateLimits
from assay.curate.llm.types import ChatRequest, ChatResponse

MODEL = "openai/fake"
SECRET = "sk-test-SECRET-4242"


def settings(server: FakeOpenAI, **kw: object) -> LLMSettings:
    base: dict[str, object] = {
        "model": MODEL,
        "api_base": server.base_url,
        "api_key": SECRET,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "retry_jitter_s": 0.01,
        "max_attempts": 4,
        "timeout_s": 5.0,
    }
    base.update(kw)
    return LLMSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["litellm", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every client behaviour holds for both transports."""
    return request.param


def req(text: str, **params: object) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=({"role": "user", "content": text},), params=params)


def run(client: LLMClient, requests: list[ChatRequest]) -> list[ChatResponse]:
    return asyncio.run(client.complete_many(requests))


@pytest.mark.parametrize("fault", ["429", "500", "503", "408", "malformed"])
def test_retryable_fault_is_retried_until_success(fault: str, transport: str) -> None:
    def script(key: str, attempt: int) -> str | None:
        return fault if attempt <= 2 else None

    with FakeOpenAI(script=script, retry_after_s=0.01) as server:
        responses = run(LLMClient(settings(server, transport=transport)), [req("a"), req("b")])
    assert [r.text for r in responses] == ["echo: a", "echo: b"]
    assert all(r.error is None for r in responses)
    assert sorted(server.attempts.values()) == [3, 3]


def test_hung_request_times_out_and_is_retried(transport: str) -> None:
    with FakeOpenAI(script=lambda key, attempt: "hang" if attempt == 1 else None) as server:
        responses = run(
            LLMClient(settings(server, transport=transport, timeout_s=0.5)), [req("slow")]
        )
    assert responses[0].text == "echo: slow"
    assert list(server.attempts.values()) == [2]


def test_client_error_is_not_retried_and_row_is_marked_failed(transport: str) -> None:
    with FakeOpenAI(script=lambda key, attempt: "400") as server:
        responses = run(LLMClient(settings(server, transport=transport)), [req("bad")])
    assert list(server.attempts.values()) == [1]
    assert responses[0].text is None
    assert responses[0].error is not None and "1 tries" in responses[0].error


def test_exhausted_retries_mark_the_row_failed_not_dropped(transport: str) -> None:
    with FakeOpenAI(script=lambda key, attempt: "500") as server:
        responses = run(
            LLMClient(settings(server, transport=transport, max_attempts=3)), [req("x"), req("y")]
        )
    assert len(responses) == 2
    assert all(r.error and "3 tries" in r.error for r in responses)
    assert sorted(server.attempts.values()) == [3, 3]


def test_retry_after_is_honoured(transport: str) -> None:
    with FakeOpenAI(
        script=lambda key, attempt: "429" if attempt == 1 else None, retry_after_s=0.4
    ) as server:
        responses = run(LLMClient(settings(server, transport=transport)), [req("wait")])
    assert responses[0].text == "echo: wait"
    first, second = server.arrivals
    assert second - first >= 0.4  # the client may not come back before retry-after


def test_output_keeps_input_order_whatever_order_answers_arrive(transport: str) -> None:
    with FakeOpenAI(latency_s=0.03, jitter_s=0.03, seed=3) as server:
        responses = run(
            LLMClient(settings(server, transport=transport)), [req(f"q{i}") for i in range(40)]
        )
    assert [r.text for r in responses] == [f"echo: q{i}" for i in range(40)]


def test_identical_requests_in_one_call_are_sent_once() -> None:
    with FakeOpenAI() as server:
        responses = run(LLMClient(settings(server)), [req("same"), req("other"), req("same")])
    assert [r.text for r in responses] == ["echo: same", "echo: other", "echo: same"]
    assert server.total_billed == 2


def test_requests_per_minute_are_not_exceeded() -> None:
    rpm, n = 600.0, 40  # 10 per second, burst of one second's worth
    with FakeOpenAI() as server:
        run(LLMClient(settings(server, rpm=rpm)), [req(f"r{i}") for i in range(n)])
    arrivals = sorted(server.arrivals)
    per_s = rpm / 60
    # every window of 1 s holds at most one second's quota. The limiter admits a second's
    # quota at once and the next one a second later; arrivals carry the wire's jitter (the
    # first burst can land 10 ms later than the next one), so windows are 50 ms shorter
    for i, start in enumerate(arrivals):
        in_window = sum(1 for t in arrivals[i:] if t < start + 0.95)
        assert in_window <= per_s + 1
    assert arrivals[-1] - arrivals[0] >= (n - per_s - 1) / per_s


def test_concurrency_cap_is_respected(transport: str) -> None:
    with FakeOpenAI(latency_s=0.05) as server:
        run(
            LLMClient(settings(server, transport=transport, max_concurrency=3)),
            [req(f"c{i}") for i in range(12)],
        )
    assert server.total_billed == 12
    assert server.max_in_flight == 3


def test_rate_limit_headers_set_the_limit_left_open(transport: str) -> None:
    headers = {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "119"}
    with FakeOpenAI(headers=headers) as server:
        client = LLMClient(settings(server, transport=transport))

        async def go() -> Limiter:
            await client.complete_many([req("h")])
            return client.limiter()

        limiter = asyncio.run(go())
    assert "requests" in limiter.buckets
    assert limiter.buckets["requests"].rate == pytest.approx(2.0)


def test_limiter_returns_reserved_tokens_once_usage_is_known() -> None:
    async def go() -> tuple[float, float]:
        limiter = Limiter(RateLimits(tpm=6000, burst_s=1.0))  # capacity 100 tokens
        held = await limiter.acquire(50, 40)
        after_reserve = limiter.buckets["tokens"].level
        limiter.settle(held, 50, 40, input_tokens=10, output_tokens=5)
        return after_reserve, limiter.buckets["tokens"].level

    reserved, settled = asyncio.run(go())
    assert reserved == pytest.approx(10, abs=1)
    assert settled == pytest.approx(85, abs=1)


def test_reasoning_and_tool_calls_are_kept_apart_from_the_answer(transport: str) -> None:
    def responder(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        if text == "think":
            return {"content": "<think>step 1</think>The answer is 4."}
        if text == "native":
            return {"content": "4", "reasoning_content": "2+2"}
        return {
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'},
                }
            ],
        }

    spec = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    with_tools = ChatRequest(
        model=MODEL, messages=({"role": "user", "content": "tool"},), tools=(spec,)
    )
    with FakeOpenAI(responder=responder) as server:
        think, native, tool = run(
            LLMClient(settings(server, transport=transport)),
            [req("think"), req("native"), with_tools],
        )
    assert (think.text, think.reasoning) == ("The answer is 4.", "step 1")
    assert (native.text, native.reasoning) == ("4", "2+2")
    assert [spec] in [b.get("tools") for b in server.bodies]
    assert tool.finish_reason == "tool_calls"
    assert tool.tool_calls and tool.tool_calls[0]["function"]["name"] == "add"
    assert think.input_tokens > 0 and think.output_tokens > 0


def test_non_ascii_answers_arrive_intact(transport: str) -> None:
    with FakeOpenAI(responder=lambda body: "café, naïve: 5 £") as server:
        (response,) = run(LLMClient(settings(server, transport=transport)), [req("accents")])
    assert response.text == "café, naïve: 5 £"


def test_the_http_transport_reads_a_body_in_the_charset_it_declares() -> None:
    """JSON is UTF-8 by its RFC; a server that declares another charset is read in that one
    (litellm's OpenAI client reads UTF-8 and fails on it)."""
    with FakeOpenAI(responder=lambda body: "café, naïve: 5 £", charset="latin-1") as server:
        (response,) = run(LLMClient(settings(server, transport="http")), [req("accents")])
    assert response.error is None
    assert response.text == "café, naïve: 5 £"


def test_custom_price_table_sets_cost(transport: str) -> None:
    prices = {MODEL: {"input": 1_000_000.0, "output": 2_000_000.0}}  # $1 / $2 per token
    with FakeOpenAI() as server:
        (response,) = run(
            LLMClient(settings(server, transport=transport, prices=prices)), [req("abcd")]
        )
    expected = response.input_tokens * 1.0 + response.output_tokens * 2.0
    assert response.cost == pytest.approx(expected)


def test_registered_backend_prefix_routes_requests() -> None:
    class Upper:
        async def complete(self, request: ChatRequest) -> ChatResponse:
            return ChatResponse(text=request.messages[-1]["content"].upper())

    register_backend("testupper", lambda settings: Upper())
    client = LLMClient(LLMSettings(model="testupper/any"))
    out = asyncio.run(
        client.complete_many(
            [ChatRequest(model="testupper/any", messages=({"role": "user", "content": "hi"},))]
        )
    )
    assert out[0].text == "HI"


def test_importing_assay_llm_touches_no_network(tmp_path: Path) -> None:
    code = """
import socket
calls = []
def refuse(self, address, *a, **k):
    calls.append(address)
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.create_connection = lambda address, *a, **k: refuse(None, address)
import assay.operators
from assay.curate.llm import _litellm
litellm = _litellm.get()
assert litellm.model_cost, "the local price map is loaded"
print("CALLS", [c for c in calls if c and c[0] not in ("127.0.0.1", "localhost")])
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "CALLS []" in out.stdout, out.stdout + out.stderr
    assert "model cost map fetch" not in out.stderr


def test_api_key_reaches_the_server_but_no_stored_request(tmp_path: Path, transport: str) -> None:
    from assay.curate.llm.cache import request_json

    with FakeOpenAI() as server:
        run(LLMClient(settings(server, transport=transport)), [req("k")])
    assert server.raw_headers[0]["Authorization"] == f"Bearer {SECRET}"
    assert server.bodies[0]["model"] == "fake"  # the provider prefix is not sent
    assert SECRET not in request_json(req("k"))
    assert SECRET not in json.dumps(settings(server, transport=transport).model_dump())
    assert SECRET not in repr(settings(server, transport=transport))


def test_connection_errors_are_retried_then_the_row_is_marked_failed(transport: str) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = LLMSettings(
        model=MODEL,
        api_base=f"http://127.0.0.1:{port}/v1",
        api_key=SECRET,
        retry_initial_s=0.01,
        retry_max_s=0.02,
        retry_jitter_s=0.01,
        max_attempts=3,
        transport=transport,  # type: ignore[arg-type]
    )
    (response,) = run(LLMClient(base), [req("nobody home")])
    assert response.error is not None and "after 3 tries" in response.error
    assert SECRET not in response.error


def test_a_configuration_error_from_a_backend_stops_instead_of_failing_rows() -> None:
    from assay.curate.errors import AssayError

    calls = []

    class Misconfigured:
        async def complete(self, request: ChatRequest) -> ChatResponse:
            calls.append(request)
            raise AssayError("no such adapter")

    register_backend("testbroken", lambda settings: Misconfigured())
    client = LLMClient(LLMSettings(model="testbroken/x"))
    with pytest.raises(AssayError, match="no such adapter"):
        asyncio.run(
            client.complete_many(
                [ChatRequest(model="testbroken/x", messages=({"role": "user", "content": "a"},))]
            )
        )
    assert len(calls) == 1  # a configuration error is never retried
