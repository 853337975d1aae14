"""Rate limits that hold against a real server: one second of quota at most in any second,
limits lowered by the server's headers, a quota 429 pausing the whole endpoint, and one
limiter per (model, endpoint) per process, whatever the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from openai_server import FakeOpenAI

from assay.curate.llm.client import LLMClient, LLMSettings, make_backend
from assay.curate.llm.http_backend import OpenAIHTTPBackend
from assay.curate.llm.limits import reset_limiters
from assay.curate.llm.types import ChatRequest, ChatResponse

MODEL = "openai/fake"


@pytest.fixture(autouse=True)
def fresh_limiters() -> Iterator[None]:
    reset_limiters()  # a port reused by a later server must not inherit learned limits
    yield
    reset_limiters()


@pytest.fixture(params=["auto", "litellm", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def settings(server: FakeOpenAI, **kw: object) -> LLMSettings:
    base: dict[str, object] = {
        "model": MODEL,
        "api_base": server.base_url,
        "retry_initial_s": 0.01,
        "retry_max_s": 0.05,
        "retry_jitter_s": 0.01,
        "max_attempts": 6,
        "timeout_s": 5.0,
    }
    base.update(kw)
    return LLMSettings(**base)  # type: ignore[arg-type]


def req(text: str) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=({"role": "user", "content": text},))


def run(client: LLMClient, requests: list[ChatRequest]) -> list[ChatResponse]:
    return asyncio.run(client.complete_many(requests))


def test_within_quota_a_per_second_window_server_sends_no_429(transport: str) -> None:
    # 10 requests per one-second window; a bucket that starts full would send 20 in the first
    with FakeOpenAI(quota_rpm=600) as server:
        out = run(
            LLMClient(settings(server, rpm=600, transport=transport)),
            [req(f"q{i}") for i in range(25)],
        )
    assert all(r.error is None for r in out)
    assert server.quota_429s == 0
    assert server.total_billed == 25


def test_the_servers_lower_limit_wins_after_its_first_answers(transport: str) -> None:
    # told 6,000 RPM, the server allows 600: only the first window can be over quota
    with FakeOpenAI(quota_rpm=600) as server:
        client = LLMClient(settings(server, rpm=6000, transport=transport))
        out = run(client, [req(f"q{i}") for i in range(40)])
        first = min(server.arrivals)
    assert all(r.error is None for r in out)
    assert client.limiter().buckets["requests"].rate == pytest.approx(10.0)
    assert server.quota_429s > 0  # the first window was over quota (the test is real)
    assert all(t < first + 1.0 for t in server.quota_429_at)


def test_a_quota_429_pauses_every_request_to_the_endpoint(transport: str) -> None:
    # no headers saying quota remains: a rate-limit 429, which must hold back the others
    def script(key: str, attempt: int) -> str | None:
        return "429" if attempt == 1 and len(server.arrivals) == 1 else None

    with FakeOpenAI(script=script, retry_after_s=0.5, latency_s=0.05) as server:
        client = LLMClient(settings(server, max_concurrency=4, transport=transport))
        out = run(client, [req(f"p{i}") for i in range(8)])
    assert all(r.error is None for r in out)
    first_four, later = server.arrivals[:4], server.arrivals[4:]
    assert len(later) == 5  # four more requests and the retry
    # the 429 came back at first + 50 ms: nothing may be sent for its 0.5 s retry-after
    assert all(t >= first_four[0] + 0.5 for t in later)
    assert client.limiter().pauses == 1


def test_a_429_that_says_quota_remains_only_delays_its_own_request(transport: str) -> None:
    # an overload 429 with quota left: the others go on, using the slot it gave back
    def script(key: str, attempt: int) -> str | None:
        return "429" if attempt == 1 and len(server.arrivals) == 1 else None

    headers = {"x-ratelimit-remaining-requests": "50"}
    with FakeOpenAI(script=script, retry_after_s=0.5, headers=headers) as server:
        client = LLMClient(settings(server, max_concurrency=1, transport=transport))
        out = run(client, [req(f"s{i}") for i in range(4)])
    assert all(r.error is None for r in out)
    first_key = next(iter(server.attempts))
    assert server.attempts[first_key] == 2
    # the three others were answered while the first waited for its retry-after
    assert max(server.arrivals[1:4]) < server.arrivals[0] + 0.5
    assert client.limiter().pauses == 0


def test_one_limiter_per_model_and_endpoint_across_clients_and_event_loops() -> None:
    with FakeOpenAI(quota_rpm=600) as server:
        one = LLMClient(settings(server, rpm=600))
        other = LLMClient(settings(server, rpm=900, max_attempts=2))
        assert one.limiter() is other.limiter()
        # two pipeline segments (two event loops) in the same second: one budget
        first = run(one, [req(f"a{i}") for i in range(8)])
        second = run(other, [req(f"b{i}") for i in range(8)])
    assert all(r.error is None for r in first + second)
    assert server.quota_429s == 0
    assert one.limiter().buckets["requests"].rate == pytest.approx(10.0)


def test_openai_compatible_endpoints_default_to_the_direct_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = "http://127.0.0.1:9/v1"
    for model in ("openai/m", "hosted_vllm/m", "ollama_chat/m"):
        assert LLMSettings(model=model, api_base=base).resolved_transport() == "http"
    assert LLMSettings(model="anthropic/claude-x").resolved_transport() == "litellm"
    assert LLMSettings(model="deepinfra/m", api_base=base).resolved_transport() == "litellm"
    assert (
        LLMSettings(model="openai/m", api_base=base, transport="litellm").resolved_transport()
        == "litellm"
    )
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key")
    backend = make_backend(LLMSettings(model="openai/gpt-4o-mini"))  # OpenAI itself
    assert isinstance(backend, OpenAIHTTPBackend)
    assert backend.url == "https://api.openai.com/v1/chat/completions"
    assert backend._headers["Authorization"] == "Bearer sk-env-key"
    custom = make_backend(LLMSettings(model="openai/m", api_base=base))
    assert isinstance(custom, OpenAIHTTPBackend) and "Authorization" not in custom._headers


@pytest.mark.parametrize(
    ("fault", "name"), [("400", "BadRequestError"), ("500", "InternalServerError")]
)
def test_failed_rows_name_the_same_error_on_both_transports(
    transport: str, fault: str, name: str
) -> None:
    with FakeOpenAI(script=lambda key, attempt: fault) as server:
        (response,) = run(
            LLMClient(settings(server, transport=transport, max_attempts=2)), [req("e")]
        )
    assert response.error is not None and name in response.error
