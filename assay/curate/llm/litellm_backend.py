"""The backend for every hosted or served model: one call to `litellm.acompletion`.

Model strings are litellm's (`openai/gpt-4o-mini`, `anthropic/claude-...`, `gemini/...`,
`hosted_vllm/<name>` or `openai/<name>` with `api_base` for vLLM, SGLang or Ollama). The
backend makes one try; the client around it does limits, retries and the cache.

litellm runs with `drop_params=True` (a parameter a provider lacks is dropped rather than
failing every request); so that nothing vanishes silently, the first request that sends a
model a parameter litellm will drop for it raises an `UnsupportedParamWarning` (once per
model and parameter, also logged on the `assay.llm` logger).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import warnings
from typing import Any

from assay.curate.llm import _litellm
from assay.curate.llm.pricing import cost_of
from assay.curate.llm.retry import ResponseError
from assay.curate.llm.secrets import is_missing_credentials, key_for_request, missing_credentials
from assay.curate.llm.types import ChatRequest, ChatResponse

THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

log = logging.getLogger("assay.llm")


class UnsupportedParamWarning(UserWarning):
    """A generation parameter the model's provider does not take; litellm drops it."""


_warned: set[tuple[str, str]] = set()
_supported: dict[tuple[str, str | None], frozenset[str] | None] = {}
_warn_lock = threading.Lock()


class LiteLLMBackend:
    """`complete(request)` -> ChatResponse through litellm, with a hard timeout.

    `api_key` is passed to litellm and nowhere else (it is not part of the request, so it
    never reaches the cache key, the cache or the logs).
    """

    def __init__(
        self,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        prices: dict[str, dict[str, float]] | None = None,
        extra: dict[str, Any] | None = None,
        api_key_env: str | None = None,
    ) -> None:
        self.api_base = api_base
        self._api_key = api_key
        self.api_key_env = api_key_env  # named in the error when no key is found
        self.timeout_s = timeout_s
        self.prices = prices
        self.extra = extra or {}
        self._litellm = _litellm.get()

    async def complete(self, request: ChatRequest) -> ChatResponse:
        kwargs: dict[str, Any] = dict(self.extra)
        kwargs.update(request.provider_params())
        if request.response_format is not None:
            kwargs["response_format"] = response_format(request.response_format)
        if request.tools:
            kwargs["tools"] = list(request.tools)
            # litellm 1.106 routes any call with tools through its MCP bridge, which
            # imports the optional `mcp` package; plain function tools don't need it
            kwargs["_skip_mcp_handler"] = True
        if self.api_base:
            kwargs["api_base"] = self.api_base
        # with an api_base and no named key this is a placeholder, never a key litellm
        # would otherwise take from the environment (OPENAI_API_KEY...); see secrets.py
        api_key = key_for_request(self._api_key, self.api_base)
        if api_key:
            kwargs["api_key"] = api_key
        self._warn_dropped(request.model, kwargs)
        started = time.perf_counter()
        # litellm's own timeout covers the HTTP call; wait_for is the backstop for a
        # provider path that ignores it, so a hung request can never stall a run
        try:
            response = await asyncio.wait_for(
                self._litellm.acompletion(
                    model=request.model,
                    messages=list(request.messages),
                    timeout=self.timeout_s,
                    max_retries=0,
                    num_retries=0,
                    **kwargs,
                ),
                timeout=self.timeout_s + 5.0,
            )
        except Exception as exc:
            # the SDK had no key to send (litellm reports it as a 500): configuration
            if not api_key and is_missing_credentials(exc):
                raise missing_credentials(request.model, self.api_base, self.api_key_env) from exc
            raise
        latency = time.perf_counter() - started
        return self._convert(request, response, latency)

    def _warn_dropped(self, model: str, kwargs: dict[str, Any]) -> None:
        """Warn once per model and parameter that litellm will drop (drop_params=True)."""
        known = getattr(self._litellm, "OPENAI_CHAT_COMPLETION_PARAMS", ())
        asked = [k for k in kwargs if k in known and k not in ("api_key", "api_base")]
        if not asked:
            return
        key = (model, self.api_base)
        if key not in _supported:
            try:
                name, provider, _, _ = self._litellm.get_llm_provider(model, api_base=self.api_base)
                names = self._litellm.get_supported_openai_params(
                    model=name, custom_llm_provider=provider
                )
                _supported[key] = frozenset(names) if names is not None else None
            except Exception:  # a model litellm cannot place: the call itself will say so
                _supported[key] = None
        supported = _supported[key]
        if supported is None:
            return
        for param in asked:
            if param in supported:
                continue
            with _warn_lock:
                if (model, param) in _warned:
                    continue
                _warned.add((model, param))
            message = (
                f"{param!r} is not supported by {model!r} (litellm's parameter table for its "
                "provider): it is dropped from every request to this model"
            )
            log.warning(message)
            warnings.warn(message, UnsupportedParamWarning, stacklevel=2)

    def _convert(self, request: ChatRequest, response: Any, latency: float) -> ChatResponse:
        choices = getattr(response, "choices", None)
        if not choices:
            raise ResponseError(f"response has no choices: {str(response)[:200]}")
        choice = choices[0]
        message = choice.message
        text = message.content
        reasoning = getattr(message, "reasoning_content", None)
        text, reasoning = split_reasoning(text, reasoning)
        tool_calls = None
        if getattr(message, "tool_calls", None):
            tool_calls = [
                {
                    "id": c.id,
                    "type": getattr(c, "type", "function") or "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in message.tool_calls
            ]
        usage = getattr(response, "usage", None)
        n_in = int(getattr(usage, "prompt_tokens", 0) or 0)
        n_out = int(getattr(usage, "completion_tokens", 0) or 0)
        hidden = getattr(response, "_hidden_params", None) or {}
        headers = hidden.get("additional_headers") or {}
        return ChatResponse(
            text=text,
            reasoning=reasoning,
            tool_calls=tool_calls,
            finish_reason=choice.finish_reason,
            input_tokens=n_in,
            output_tokens=n_out,
            cost=cost_of(request.model, n_in, n_out, self.prices),
            latency_s=latency,
            headers=rate_headers(headers),
        )


def split_reasoning(text: str | None, reasoning: str | None) -> tuple[str | None, str | None]:
    """Move `<think>...</think>` blocks out of the answer into the reasoning."""
    if text and "<think>" in text:
        blocks = [b.strip() for b in THINK.findall(text)]
        text = THINK.sub("", text).strip()
        found = "\n\n".join(b for b in blocks if b)
        reasoning = f"{reasoning}\n\n{found}" if reasoning and found else (reasoning or found)
    if reasoning and text:
        text = text.lstrip()  # the whitespace that followed a reasoning block
    return text, reasoning or None


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") in ("json_object", "json_schema", "text") and "properties" not in schema:
        return schema
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title", "response")))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def rate_headers(headers: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in headers.items():
        k = key.lower()
        if k.startswith("llm_provider-"):
            k = k[len("llm_provider-") :]
        if "ratelimit" in k or k.startswith("retry-after"):
            out[k] = str(value)
    return out
