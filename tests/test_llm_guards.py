"""Guards found in review: secrets kept out of generation parameters, the token estimate
protected from failed tries, RE2 patterns across lines, and deeply nested JSON."""

from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from assay.curate.llm.limits import Limiter, RateLimits
from assay.operators.generate import Generate
from assay.operators.jsontext import extract_json
from assay.operators.parse import ParseRegex


@pytest.mark.parametrize("key", ["extra_headers", "api_key", "timeout"])
def test_transport_settings_are_refused_as_generation_kwargs(key: str) -> None:
    with pytest.raises(ValueError, match=f"generation_kwargs may not set {key}"):
        Generate(model="openai/x", prompt="hi", generation_kwargs={key: "Bearer sk-LEAK"})


def test_failed_tries_do_not_shrink_the_output_estimate() -> None:
    limiter = Limiter(RateLimits(tpm=100_000))
    for _ in range(3):
        limiter.settle(None, 10, 100, 10, 500)
    for _ in range(9):
        limiter.settle(None, 10, 500, None, 0, sample=False)
    assert limiter.estimate_output(None) == 500


def test_unreported_usage_keeps_the_reservation() -> None:
    limiter = Limiter(RateLimits(tpm=600))
    held = asyncio.run(limiter.acquire(300, 100))
    level = limiter.buckets["tokens"].level
    limiter.settle(held, 300, 100, None, None)
    assert limiter.buckets["tokens"].level == level  # nothing refunded
    limiter.settle(held, 300, 100, 10, 10)
    assert limiter.buckets["tokens"].level > level  # reported usage refunds the difference


def test_parse_regex_dot_matches_newlines() -> None:
    table = pa.table({"id": ["a"], "generation": ["Answer:\nfoo\nbar"]})
    out = ParseRegex(pattern=r"Answer:(?P<answer>.*)").process(table)
    assert out["answer"].to_pylist() == ["\nfoo\nbar"]


def test_deeply_nested_json_is_a_validation_error_not_a_crash() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        extract_json("[" * 5000)


def test_a_bug_in_a_backend_fails_its_row_once_instead_of_retrying() -> None:
    from assay.curate.llm.client import LLMClient, LLMSettings, register_backend
    from assay.curate.llm.types import ChatRequest, ChatResponse

    calls = []

    class Buggy:
        async def complete(self, request: ChatRequest) -> ChatResponse:
            calls.append(request)
            return request.nonexistent  # type: ignore[attr-defined]

    register_backend("testbuggy", lambda settings: Buggy())
    client = LLMClient(LLMSettings(model="testbuggy/x", retry_initial_s=0.01))
    message = ({"role": "user", "content": "a"},)
    (response,) = asyncio.run(client.complete_many([ChatRequest("testbuggy/x", message)]))
    assert len(calls) == 1
    assert response.text is None and "AttributeError" in (response.error or "")
