"""LLMClient: rate limits, retries and the request cache around one Backend.

    client = LLMClient(LLMSettings(model="openai/qwen", api_base="http://127.0.0.1:8000/v1"))
    responses = await client.complete_many([ChatRequest(model="openai/qwen", messages=...)])

`complete_many` returns one response per request, in the order given, whatever order the
provider answers in. A request whose every try failed comes back with `error` set (it is
never dropped). Inside a run, the executor's StageContext gives the run store: stored
responses are reused (unless `--no-cache`), new ones are stored before they count as done,
and every request is appended to the run's `request_log`.

Model strings starting with a registered prefix (`local/...`) go to that prefix's backend
factory. Endpoints that speak the OpenAI API (an `api_base` with `openai/`, `hosted_vllm/`
and the other OpenAI-compatible prefixes; `openai/...` without one, i.e. OpenAI itself) get
the direct transport (http_backend.py, about a tenth of litellm's CPU per request) unless
`transport="litellm"`; every other provider goes to litellm. Limits, retries, the cache,
costs and error classification are the same either way.

The rate limiter is one per (model, endpoint) per process (limits.py `limiter_for`), shared
by every stage, pipeline segment and event loop; a try holds a concurrency slot only while
it is on the wire, so a request waiting to retry leaves its place to others.

Cache keys include who answers (identity.py): the normalised `api_base`, and for a backend
with `weights_id(model)` (the local one) a fingerprint of the weights files.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from assay.curate.context import current_stage
from assay.curate.errors import AssayError
from assay.curate.llm.cache import LogRow, RequestCache, cache_for
from assay.curate.llm.http_backend import OPENAI_BASE, speaks_openai
from assay.curate.llm.identity import answered_by, normalise_api_base
from assay.curate.llm.limits import Limiter, RateLimits, limiter_for
from assay.curate.llm.litellm_backend import rate_headers
from assay.curate.llm.rate_headers import is_rate_limit
from assay.curate.llm.retry import (
    RetryPolicy,
    describe_error,
    first_wait,
    is_retryable,
    retry_after,
    retrying,
    status_of,
)
from assay.curate.llm.secrets import key_for_request, missing_credentials, scrub
from assay.curate.llm.types import Backend, ChatRequest, ChatResponse

BackendFactory = Callable[["LLMSettings"], Backend]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(prefix: str, factory: BackendFactory) -> None:
    """Route model strings `"<prefix>/..."` to `factory(settings)` (e.g. `local`)."""
    _BACKENDS[prefix.rstrip("/")] = factory


class LLMSettings(BaseModel):
    """Which model to call and how hard; shared by every stage that calls a model.

    `api_key` is never recorded (excluded from the stage's parameters); prefer
    `api_key_env`, the name of an environment variable holding it.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    rpm: float | None = None
    tpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None
    max_concurrency: int = 64
    # a hung request must not stall a run: 60 s covers a long non-streamed answer from a
    # hosted model; raise it per model for slow local servers or long reasoning traces
    timeout_s: float = 60.0
    max_attempts: int = 6
    retry_initial_s: float = 1.0
    retry_max_s: float = 30.0
    retry_jitter_s: float = 1.0
    prices: dict[str, dict[str, float]] | None = None
    # "auto": the direct transport where the endpoint speaks the OpenAI API, litellm for
    # every other provider; "litellm" / "http" force one (see http_backend.py)
    transport: Literal["auto", "litellm", "http"] = "auto"
    # the limiter admits at most this many seconds of quota in any window this long
    burst_s: float = Field(default=1.0, gt=0)

    def limits(self) -> RateLimits:
        return RateLimits(
            rpm=self.rpm,
            tpm=self.tpm,
            input_tpm=self.input_tpm,
            output_tpm=self.output_tpm,
            max_concurrency=self.max_concurrency,
            burst_s=self.burst_s,
        )

    def resolved_transport(self) -> str:
        """The transport `auto` picks for this model and endpoint."""
        if self.transport != "auto":
            return self.transport
        return "http" if speaks_openai(self.model, self.api_base) else "litellm"

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_wait_s=self.retry_initial_s,
            max_wait_s=self.retry_max_s,
            jitter_s=self.retry_jitter_s,
        )

    def secret(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None

    def client_key(self) -> tuple[Any, ...]:
        """Stages with equal settings share one client (and so one set of limits)."""
        settings = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return (settings, hash(self.secret()))


# prefixes whose backend registers itself on first use (module:function)
_LAZY_BACKENDS = {"local": "assay.models.shared_backends:register_local_backend"}


def make_backend(settings: LLMSettings) -> Backend:
    prefix = settings.model.split("/", 1)[0] if "/" in settings.model else ""
    if prefix not in _BACKENDS and prefix in _LAZY_BACKENDS:
        module, function = _LAZY_BACKENDS[prefix].split(":")
        getattr(importlib.import_module(module), function)()
    factory = _BACKENDS.get(prefix)
    if factory is not None:
        return factory(settings)
    if settings.resolved_transport() == "http":
        from assay.curate.llm.http_backend import OpenAIHTTPBackend

        api_base, key = settings.api_base, settings.secret()
        if not api_base:
            if not settings.model.startswith("openai/"):
                raise ValueError(f"transport='http' needs an api_base (model {settings.model!r})")
            # OpenAI itself: where litellm would send it, with the key litellm would use
            api_base = os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
            api_base = api_base or OPENAI_BASE
            key = key or os.environ.get("OPENAI_API_KEY")
            if not key:  # the OpenAI SDK refuses to send without one; so does this path
                raise missing_credentials(settings.model, None, settings.api_key_env)
        return OpenAIHTTPBackend(api_base, key, settings.timeout_s, settings.prices)
    from assay.curate.llm.litellm_backend import LiteLLMBackend

    return LiteLLMBackend(
        api_base=settings.api_base,
        # a custom api_base never gets a key from the environment (see secrets.py)
        api_key=key_for_request(settings.secret(), settings.api_base),
        timeout_s=settings.timeout_s,
        prices=settings.prices,
        api_key_env=settings.api_key_env,
    )


class LLMClient:
    """Limits + retries + cache around a backend. Safe to reuse across event loops."""

    def __init__(
        self,
        settings: LLMSettings,
        backend: Backend | None = None,
        cache: RequestCache | None = None,
    ) -> None:
        self.settings = settings
        self._backend = backend
        self._cache = cache
        self._policy = settings.retry_policy()
        # tenacity takes over from the second try (see `_call`)
        self._retrying = retrying(self._policy, tries_done=1)
        self._limiter: Limiter | None = None
        self.sent = 0  # tries sent to the backend, for tests and benchmarks

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.settings)
        return self._backend

    def limiter(self) -> Limiter:
        """The process's limiter for this model and endpoint (shared across stages)."""
        if self._limiter is None:
            base = self.settings.api_base
            endpoint = normalise_api_base(base) if base else None
            self._limiter = limiter_for(self.settings.model, endpoint, self.settings.limits())
        return self._limiter

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return (await self.complete_many([request]))[0]

    async def complete_many(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """One response per request, in order; failures come back with `error` set."""
        ctx = current_stage.get()
        cache = self._cache
        if cache is None and ctx is not None and ctx.store is not None:
            cache = cache_for(ctx.store)
        use_cache = cache is not None and not (ctx is not None and ctx.no_cache)
        identities = self.identities(requests)
        keys = [r.cache_key(identities[r.model]) for r in requests]
        found = cache.get_many(keys) if use_cache and cache is not None else {}
        if cache is not None and ctx is not None and found:
            cache.log_now(
                [
                    LogRow(ctx.run_id, ctx.stage_index, k, r.model, found[k])
                    for k, r in zip(keys, requests, strict=True)
                    if k in found
                ]
            )
        todo: dict[str, asyncio.Task[ChatResponse]] = {}
        missing = [(k, r) for k, r in zip(keys, requests, strict=True) if k not in found]
        if missing:
            # a backend with a `scope` (a connection pool) keeps it open for the batch
            scope = getattr(self.backend, "scope", None)
            async with scope() if scope is not None else contextlib.nullcontext():
                # fetches of this batch not yet at the cache: the last one commits at once
                # rather than after FLUSH_EVERY_S (the batch is waiting on it)
                left = [0]
                for key, request in missing:
                    if key not in todo:
                        who = identities[request.model]
                        todo[key] = asyncio.ensure_future(
                            self._fetch(request, key, cache, ctx, who, left)
                        )
                left[0] = len(todo)  # none has started: they run from the first await
                try:
                    await asyncio.gather(*todo.values())
                finally:
                    for task in todo.values():
                        task.cancel()
        return [found[k] if k in found else todo[k].result() for k in keys]

    def identities(self, requests: list[ChatRequest]) -> dict[str, dict[str, Any] | None]:
        """Who answers each model string of the batch (the cache key's `answered_by`)."""
        weights_id = getattr(self._identity_backend(), "weights_id", None)
        out: dict[str, dict[str, Any] | None] = {}
        for request in requests:
            if request.model not in out:
                weights = None
                if weights_id is not None:
                    try:
                        weights = weights_id(request.model)
                    except Exception as exc:
                        # e.g. an unknown adapter: the request itself fails the same way
                        # (and failures are never stored); the key must still not be a
                        # weight-less one that real answers could share
                        weights = f"unidentified ({type(exc).__name__})"
                out[request.model] = answered_by(self.settings.api_base, weights)
        return out

    def _identity_backend(self) -> Backend | None:
        """The backend, if it may know its weights: one given, or a prefix backend (building
        a litellm backend just to learn it has no weights would import litellm for nothing)."""
        if self._backend is not None:
            return self._backend
        prefix = self.settings.model.split("/", 1)[0] if "/" in self.settings.model else ""
        return self.backend if prefix in _BACKENDS or prefix in _LAZY_BACKENDS else None

    async def _call(self, once: Callable[[], Awaitable[ChatResponse]]) -> ChatResponse:
        """First try directly; only a failure pays for a tenacity controller.

        Building one per request (`AsyncRetrying.copy()`) costs more CPU than the whole
        HTTP exchange on the direct transport, and most requests succeed first time.
        """
        try:
            return await once()
        except Exception as exc:
            if self._policy.max_attempts <= 1 or not is_retryable(exc):
                raise
            first = exc
        await asyncio.sleep(first_wait(self._policy, first))
        return await self._retrying.copy()(once)

    async def _fetch(
        self,
        request: ChatRequest,
        key: str,
        cache: RequestCache | None,
        ctx: Any,
        who: dict[str, Any] | None = None,
        left: list[int] | None = None,
    ) -> ChatResponse:
        limiter = self.limiter()
        # built (litellm imported: seconds) before a slot is taken, not between the
        # limiter's admission and the send, which would bunch admitted requests on the wire
        backend = self.backend
        est_in = _estimate_input(request)
        max_tokens = request.params.get("max_tokens")
        attempts = 0

        async def once() -> ChatResponse:
            nonlocal attempts
            attempts += 1
            est_out = limiter.estimate_output(max_tokens if isinstance(max_tokens, int) else None)
            # the slot is held for this try only: a request waiting to retry leaves it
            async with limiter.slot():
                held = await limiter.acquire(est_in, est_out)
                self.sent += 1
                try:
                    response = await backend.complete(request)
                except BaseException as exc:
                    # a failed try used a request but no output tokens
                    limiter.settle(held, est_in, est_out, None, 0, sample=False)
                    if isinstance(exc, Exception):
                        _observe_failure(limiter, exc)
                    raise
            if response.input_tokens or response.output_tokens:
                n_in, n_out = response.input_tokens, response.output_tokens
                limiter.settle(held, est_in, est_out, n_in, n_out)
            else:  # no usage reported: keep the reservation rather than refund it all
                limiter.settle(held, est_in, est_out, None, None)
            limiter.observe_headers(response.headers, response.latency_s)
            return response

        try:
            response = await self._call(once)
        except AssayError:
            raise  # a configuration error (unknown local model...) stops the run
        except Exception as exc:
            error = f"failed after {attempts} tries: {describe_error(exc)}"
            # provider errors sometimes quote a key (the stage's, or another the SDK
            # found): none may reach the rejects, the request log or a report
            error = scrub(error, (self.settings.secret(),))
            response = ChatResponse(text=None, error=error)
        response.headers = {}
        if cache is not None:
            log = LogRow(ctx.run_id, ctx.stage_index, key, request.model, response) if ctx else None
            # a commit costs 4-10 ms of CPU whatever its size (two inserts and the commit: a
            # sixth of the direct transport's CPU at 50 answers a group), so a group takes up
            # to one answer per slot; a try frees its slot before this wait, so the wait
            # holds no request back (FLUSH_EVERY_S bounds it)
            group = max(1, self.settings.max_concurrency)
            last = False
            if left is not None:
                left[0] -= 1
                last = left[0] <= 0
            await cache.put(
                request, key, response, log, max_pending=1 if last else group, answered_by=who
            )
        return response


def _observe_failure(limiter: Limiter, exc: Exception) -> None:
    """A failed try's rate headers count; a quota 429 pauses the whole endpoint."""
    headers = getattr(exc, "headers", None) or getattr(exc, "litellm_response_headers", None)
    if headers:
        with contextlib.suppress(AttributeError, TypeError):
            limiter.observe_headers(rate_headers(dict(headers.items())))
    if is_rate_limit(exc, status_of(exc)):
        # out of quota: every request to the endpoint waits, not only this one
        limiter.rate_limited(retry_after(exc))


def _estimate_input(request: ChatRequest) -> float:
    """About 4 characters per token; corrected once the provider reports usage."""
    chars = 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            chars += len(str(content))
    return chars / 4 + 4 * len(request.messages)


_clients: dict[tuple[Any, ...], LLMClient] = {}


def client_for(settings: LLMSettings) -> LLMClient:
    """The shared client for these settings (stages on one endpoint share its limits)."""
    key = settings.client_key()
    client = _clients.get(key)
    if client is None:
        client = LLMClient(settings)
        _clients[key] = client
    return client
