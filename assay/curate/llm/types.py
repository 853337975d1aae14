"""The request and response every LLM backend speaks (hosted via litellm, or local).

A `ChatRequest` is everything that changes the answer; its `cache_key()` is the request
cache's key. A backend turns one request into one `ChatResponse`; the client around it adds
rate limits, retries and the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make.

    `params` holds generation parameters (temperature, max_tokens, top_p, seed, stop...);
    `response_format` a JSON schema the answer must follow; `tools` OpenAI-style tool specs;
    `sample_index` tells apart the n samples of one prompt (part of the cache key).
    """

    model: str
    messages: tuple[dict[str, Any], ...]
    params: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    sample_index: int = 0

    def provider_params(self) -> dict[str, Any]:
        """`params` as sent to a provider: sample k > 0 of a seeded prompt gets its own seed
        (otherwise the n samples of a seeded prompt would all be the same answer)."""
        seed = self.params.get("seed")
        if seed is None or self.sample_index == 0:
            return dict(self.params)
        return {**self.params, "seed": sample_seed(int(seed), self.sample_index)}

    def cache_key(self, answered_by: dict[str, Any] | None = None) -> str:
        """A hash of everything that changes the answer (never of API keys or parsing).

        `answered_by` is who answers (endpoint, weights fingerprint: see identity.py); the
        client adds it, so one model string on two servers or weights never shares a key.
        """
        payload = {
            "model": self.model,
            "messages": list(self.messages),
            "params": self.params,
            "response_format": self.response_format,
            "tools": list(self.tools) if self.tools else None,
            "sample_index": self.sample_index,
        }
        if answered_by:
            payload["answered_by"] = answered_by
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def sample_seed(seed: int, sample_index: int) -> int:
    """The seed of sample `sample_index` of a prompt seeded with `seed` (sample 0 keeps it)."""
    return seed if sample_index == 0 else (seed * 1_000_003 + sample_index) % 2**31


@dataclass
class ChatResponse:
    """What came back: the answer, separated reasoning, tool calls, usage and cost."""

    text: str | None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    # Added by the LLM layer (all optional, so every backend may ignore them):
    # rate-limit headers the provider sent (`x-ratelimit-*`, `retry-after`), lower-cased;
    # never stored in the cache.
    headers: dict[str, str] = field(default_factory=dict)
    # set by the client when every try failed; the row is kept and marked failed
    error: str | None = None


class InvalidRequestError(ValueError):
    """A request that can never succeed as written (a bad schema, an unknown tool, a prompt
    the chat template refuses): its row fails at once, without retries."""


class Backend(Protocol):
    """Anything that can answer a ChatRequest (litellm, the local model, vLLM)."""

    async def complete(self, request: ChatRequest) -> ChatResponse: ...
