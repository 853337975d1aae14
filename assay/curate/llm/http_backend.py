"""The direct backend for endpoints that speak the OpenAI API (OpenAI, vLLM, SGLang, Ollama,
`assay serve`): the default wherever `speaks_openai(model, api_base)` holds.

It sends chat completions straight over aiohttp instead of through litellm. litellm costs 7-10 ms of CPU per request (the OpenAI SDK's request
transforms, its logging and cost hooks: measured on the benchmark's server), raw aiohttp
under 1 ms; at thousands of requests per minute against a local server that is the
difference between the client or the GPU being the bottleneck. Same request and response
contract, same retry classification (status codes, retry-after, bad bodies) as the
litellm path; a non-2xx answer raises the error class litellm would (`RateLimitError`,
`BadRequestError`...), so failed rows read the same on both transports.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from assay.curate.llm.litellm_backend import rate_headers, response_format, split_reasoning
from assay.curate.llm.pricing import cost_of
from assay.curate.llm.retry import ResponseError
from assay.curate.llm.types import ChatRequest, ChatResponse

if TYPE_CHECKING:  # aiohttp is imported by the first backend built (0.15 s), not by
    import aiohttp  # everything that imports the client

PROVIDER_PREFIXES = ("openai/", "hosted_vllm/", "openai_like/", "ollama_chat/", "vllm/")
OPENAI_BASE = "https://api.openai.com/v1"
UTF8 = ("utf-8", "utf8")  # charsets json.loads reads from the bytes as they are


def speaks_openai(model: str, api_base: str | None) -> bool:
    """Does this endpoint speak the OpenAI chat API (so the direct transport can serve it)?

    An `api_base` with an OpenAI-compatible prefix, or `openai/...` with none (OpenAI).
    """
    if api_base:
        return model.startswith(PROVIDER_PREFIXES)
    return model.startswith("openai/")


class HTTPStatusError(Exception):
    """A non-2xx answer; `status_code` and `headers` drive the retry decision."""

    def __init__(self, status_code: int, body: str, headers: Any) -> None:
        super().__init__(f"HTTP {status_code}: {body[:300]}")
        self.status_code = status_code
        self.headers = headers


def _error_class(name: str) -> type[HTTPStatusError]:
    return type(name, (HTTPStatusError,), {"__module__": __name__})


# the names litellm (and the OpenAI SDK) give these answers
_BY_STATUS = {
    code: _error_class(name)
    for code, name in (
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (408, "Timeout"),
        (422, "UnprocessableEntityError"),
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (502, "APIConnectionError"),
        (503, "ServiceUnavailableError"),
    )
}


def status_error(status: int, body: str, headers: Any) -> HTTPStatusError:
    default = _BY_STATUS[500] if status >= 500 else HTTPStatusError
    return _BY_STATUS.get(status, default)(status, body, headers)


class OpenAIHTTPBackend:
    """POST `<api_base>/chat/completions`; one try per call (the client retries)."""

    def __init__(
        self,
        api_base: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        prices: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.url = api_base.rstrip("/") + "/chat/completions"
        # OpenAI's own API takes max_completion_tokens (reasoning models refuse max_tokens)
        self._openai = api_base.rstrip("/").startswith("https://api.openai.com")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        import aiohttp
        import yarl

        self._url = yarl.URL(self.url)  # parsed once, not per request
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.prices = prices
        self._session: aiohttp.ClientSession | None = None
        self._users = 0

    @asynccontextmanager
    async def scope(self) -> AsyncIterator[None]:
        """Share one connection pool while any batch is running; close it after."""
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._session is not None:
                session, self._session = self._session, None
                await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # no per-host cap: the client's concurrency limit is the cap
            import aiohttp

            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if self._users == 0:
            async with self.scope():
                return await self._complete(request)
        return await self._complete(request)

    async def _complete(self, request: ChatRequest) -> ChatResponse:
        body: dict[str, Any] = {"model": _served_name(request.model)}
        body["messages"] = list(request.messages)
        body.update(request.provider_params())
        if self._openai and "max_tokens" in body and "max_completion_tokens" not in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        if request.response_format is not None:
            body["response_format"] = response_format(request.response_format)
        if request.tools:
            body["tools"] = list(request.tools)
        started = time.perf_counter()
        session = self._get_session()
        # bytes both ways: a str body or `resp.text()` costs aiohttp a charset lookup per call
        payload = json.dumps(body).encode()
        async with session.post(self._url, data=payload, headers=self._headers) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise status_error(resp.status, _decode(raw, resp.charset), resp.headers)
            charset = resp.charset  # JSON is UTF-8 (json.loads reads the bytes) unless said
            text = _decode(raw, charset) if charset and charset.lower() not in UTF8 else raw
            headers = resp.headers
        latency = time.perf_counter() - started
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResponseError(f"response body is not valid JSON: {exc}") from exc
        return self._convert(request, data, headers, latency)

    def _convert(
        self, request: ChatRequest, data: dict[str, Any], headers: Any, latency: float
    ) -> ChatResponse:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices:
            raise ResponseError(f"response has no choices: {str(data)[:200]}")
        choice = choices[0]
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        text, reasoning = split_reasoning(message.get("content"), reasoning)
        usage = data.get("usage") or {}
        n_in = int(usage.get("prompt_tokens") or 0)
        n_out = int(usage.get("completion_tokens") or 0)
        return ChatResponse(
            text=text,
            reasoning=reasoning,
            tool_calls=message.get("tool_calls") or None,
            finish_reason=choice.get("finish_reason"),
            input_tokens=n_in,
            output_tokens=n_out,
            cost=cost_of(request.model, n_in, n_out, self.prices),
            latency_s=latency,
            headers=rate_headers(headers),
        )


def _decode(raw: bytes, charset: str | None) -> str:
    """A body as text: its declared charset (UTF-8 if none or unknown), never raising."""
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _served_name(model: str) -> str:
    for prefix in PROVIDER_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model
