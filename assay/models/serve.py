"""`assay serve`: an OpenAI-compatible HTTP server over the local backend.

One base model and any number of LoRA adapters share one `LocalBackend`: a request's `model`
picks the base (`smollm2-135m`) or an adapter (`sql-intern` or `smollm2-135m+sql-intern`), and
concurrent requests for different adapters are generated in the same forward pass.

Endpoints: `GET /v1/models`, `POST /v1/chat/completions` (non-streaming; `stream: true` is
answered as a single-chunk event stream), `GET /health`. Bound to 127.0.0.1 by default; with
`api_key` set, every `/v1` request needs `Authorization: Bearer <api_key>`.

    from assay.models.serve import serve
    serve("smollm2-135m", adapters={"sql-intern": "out/sql-intern"}, port=8000)

Then, from anywhere: `litellm.completion(model="openai/sql-intern",
api_base="http://127.0.0.1:8000/v1", api_key="...", messages=[...])`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from assay.curate.llm.types import ChatRequest, ChatResponse
from assay.models.local_backend import LocalBackend
from assay.models.registry import ADAPTER_SEPARATOR

PARAM_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "tool_choice",
    "parallel_tool_calls",
    "ignore_eos",  # vLLM's extension, for benchmarks with fixed output lengths
)


MAX_N = 64  # samples per request: more would queue unbounded work for one call


def create_app(backend: LocalBackend, api_key: str | None = None) -> Any:
    """The FastAPI app answering OpenAI chat completions from `backend`."""
    app = FastAPI(title="assay serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not secrets.compare_digest(header.encode(), f"Bearer {api_key}".encode()):
            raise HTTPException(status_code=401, detail="invalid API key")

    def served_names() -> list[str]:
        return [backend.name, *backend.adapter_names()]

    @app.exception_handler(HTTPException)
    async def openai_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        body = {"error": {"message": exc.detail, "type": kind, "code": exc.status_code}}
        return JSONResponse(body, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": backend.name}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "assay"}
            for name in served_names()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        check_key(request)
        try:
            body = await request.json()
        except ValueError as exc:
            raise HTTPException(status_code=400, detail="the body is not JSON") from exc
        if not isinstance(body, dict):
            raise HTTPException(status_code=400, detail="the body must be a JSON object")
        model = body.get("model") or backend.name
        try:
            local_model = _local_model_name(backend, model)
        except ValueError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HTTPException(status_code=400, detail="messages must be a non-empty list")
        if not all(isinstance(m, dict) for m in messages):
            raise HTTPException(status_code=400, detail="each message must be an object")
        params = {k: body[k] for k in PARAM_FIELDS if body.get(k) is not None}
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise HTTPException(status_code=400, detail=f"n must be an integer in 1..{MAX_N}")
        requests = [
            ChatRequest(
                model=local_model,
                messages=tuple(messages),
                params=params,
                response_format=body.get("response_format"),
                tools=tuple(body["tools"]) if body.get("tools") else None,
                sample_index=i,
            )
            for i in range(n)
        ]
        try:
            responses = await asyncio.gather(*(backend.complete(r) for r in requests))
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        completion = _completion_body(model, responses)
        if body.get("stream"):
            return StreamingResponse(_as_stream(completion), media_type="text/event-stream")
        return completion

    return app


def _local_model_name(backend: LocalBackend, model: str) -> str:
    """`base`, `adapter` or `base+adapter` -> the backend's `base[+adapter]` string."""
    if model in (backend.name, f"local/{backend.name}"):
        return backend.name
    name = model.removeprefix("local/")
    if ADAPTER_SEPARATOR not in name:
        name = f"{backend.name}{ADAPTER_SEPARATOR}{name}"
    backend.adapter_of(name)  # raises ValueError for unknown adapters
    return name


def _completion_body(model: str, responses: list[ChatResponse]) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(responses):
        message: dict[str, Any] = {"role": "assistant", "content": r.text}
        if r.tool_calls:
            message["tool_calls"] = r.tool_calls
        choices.append({"index": i, "message": message, "finish_reason": r.finish_reason})
    prompt_tokens = responses[0].input_tokens if responses else 0
    completion_tokens = sum(r.output_tokens for r in responses)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


async def _as_stream(completion: dict[str, Any]) -> Any:
    """The whole completion as one chunk per choice, then [DONE] (no token streaming)."""
    for choice in completion["choices"]:
        delta = {k: v for k, v in choice["message"].items() if v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
        chunk = {
            "id": completion["id"],
            "object": "chat.completion.chunk",
            "created": completion["created"],
            "model": completion["model"],
            "choices": [
                {"index": choice["index"], "delta": delta, "finish_reason": choice["finish_reason"]}
            ],
            "usage": completion["usage"],
        }
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def build_backend(
    model: str,
    adapters: dict[str, str | Path] | None = None,
    max_batch_size: int = 32,
    device: str | None = None,
    threads: int | None = None,
    gather_s: float = 0.005,
) -> LocalBackend:
    """A loaded backend for `model` with `adapters` (name -> PEFT adapter directory)."""
    backend = LocalBackend(
        model,
        adapters=adapters,
        max_batch_size=max_batch_size,
        device=device,
        threads=threads,
        gather_s=gather_s,
    )
    backend.load()
    return backend


def serve(
    model: str = "smollm2-135m",
    adapters: dict[str, str | Path] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch_size: int = 32,
    device: str | None = None,
    threads: int | None = None,
) -> None:
    """Serve `model` and its LoRA `adapters` (name -> directory) until interrupted.

    Registered adapters of `model` (`models.register_adapter`) are served too. Binds to
    127.0.0.1 unless `host` says otherwise; `api_key` makes every `/v1` call need it.
    """
    import uvicorn

    backend = build_backend(model, adapters, max_batch_size, device, threads)
    try:
        uvicorn.run(create_app(backend, api_key), host=host, port=port, log_level="info")
    finally:
        backend.close()
