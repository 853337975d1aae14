"""`assay serve` end to end: a real uvicorn server on loopback, called through litellm."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from local_tiny_model import build_lora_adapter, build_tiny_model

from assay.curate.llm.types import ChatRequest
from assay.models.local_backend import LocalBackend
from assay.models.registry import ModelRegistry
from assay.models.serve import create_app

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no price-map download at import
API_KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is the weather in Paris today?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("serve")
    model_dir = build_tiny_model(root / "model")
    adapters = {
        "sql-intern": build_lora_adapter(model_dir, root / "lora-sql", seed=1),
        "math-intern": build_lora_adapter(model_dir, root / "lora-math", seed=2),
    }
    registry = ModelRegistry(root / "registry.json")
    registry.register_model("tiny", model_dir)
    # a long gather window makes "requests sent together share a batch" deterministic
    backend = LocalBackend(
        "tiny", adapters=adapters, registry=registry, device="cpu", gather_s=0.5, threads=1
    )
    backend.load()
    port = free_port()
    config = uvicorn.Config(
        create_app(backend, api_key=API_KEY), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield backend, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)
    backend.close()


def litellm_call(api_base: str, model: str, **kwargs):
    import litellm

    return litellm.acompletion(
        model=f"openai/{model}",
        api_base=api_base,
        api_key=kwargs.pop("api_key", API_KEY),
        messages=kwargs.pop("messages", QUESTION),
        temperature=0,
        max_tokens=kwargs.pop("max_tokens", 10),
        num_retries=0,
        **kwargs,
    )


def test_two_adapters_and_base_answer_litellm_in_one_batch(server):
    backend, api_base = server
    names = ["tiny", "sql-intern", "math-intern", "tiny+sql-intern"]
    expected = [
        backend.complete_many(
            [
                ChatRequest(
                    model=n, messages=tuple(QUESTION), params={"temperature": 0, "max_tokens": 10}
                )
            ]
        )[0].text
        for n in ["tiny", "tiny+sql-intern", "tiny+math-intern", "tiny+sql-intern"]
    ]
    assert len(set(expected)) == 3
    batches_before = backend.batches_run

    async def together():
        return await asyncio.gather(*(litellm_call(api_base, n) for n in names))

    responses = asyncio.run(together())
    assert [r.choices[0].message.content for r in responses] == expected
    assert [r.model.split("/")[-1] for r in responses] == names
    assert backend.batches_run - batches_before == 1  # one forward-pass batch for all four
    assert backend.most_adapters_in_batch == 3
    assert responses[0].usage.completion_tokens == 10


def test_models_endpoint_and_api_key(server):
    _, api_base = server
    listed = httpx.get(f"{api_base}/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert listed.status_code == 200
    assert {m["id"] for m in listed.json()["data"]} == {"tiny", "sql-intern", "math-intern"}
    assert httpx.get(f"{api_base}/models").status_code == 401

    import litellm

    with pytest.raises(litellm.AuthenticationError):
        asyncio.run(litellm_call(api_base, "tiny", api_key="wrong"))
    # an unknown model is a 404 on the wire, which litellm maps to NotFoundError
    unknown = httpx.post(
        f"{api_base}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": "no-such-adapter", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert unknown.status_code == 404
    with pytest.raises(litellm.NotFoundError, match="unknown adapter 'no-such-adapter'") as err:
        asyncio.run(litellm_call(api_base, "no-such-adapter"))
    assert err.value.status_code == 404


def test_json_schema_and_tool_calls_through_litellm(server):
    _, api_base = server
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"enum": ["Paris", "Rome"]}},
                    "required": ["city"],
                },
            },
        }
    ]

    async def both():
        return await asyncio.gather(
            litellm_call(api_base, "sql-intern", response_format=fmt, max_tokens=60),
            litellm_call(
                api_base,
                "math-intern",
                tools=tools,
                tool_choice="required",
                parallel_tool_calls=False,
                max_tokens=60,
                # litellm 1.106 imports the optional `mcp` package for any call with tools
                # unless told to skip its MCP handler
                _skip_mcp_handler=True,
            ),
        )

    structured, tool_use = asyncio.run(both())
    answer = json.loads(structured.choices[0].message.content)
    assert answer["city"] in {"Paris", "Rome"} and isinstance(answer["rain"], bool)
    calls = tool_use.choices[0].message.tool_calls
    assert tool_use.choices[0].finish_reason == "tool_calls"
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["city"] in {"Paris", "Rome"}


def test_n_samples_come_back_as_choices(server):
    _, api_base = server
    r = httpx.post(
        f"{api_base}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={
            "model": "tiny",
            "messages": QUESTION,
            "n": 3,
            "temperature": 1.0,
            "seed": 5,
            "max_tokens": 8,
        },
        timeout=60,
    )
    assert r.status_code == 200
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) > 1


def test_serve_entry_point_binds_loopback_and_answers(tmp_path):
    """`serve()` (what `assay serve` calls) in its own process, stopped with SIGTERM."""
    import subprocess
    import sys

    model_dir = build_tiny_model(tmp_path / "model")
    adapter = build_lora_adapter(model_dir, tmp_path / "lora", seed=3)
    port = free_port()
    code = (
        "from assay.models.serve import serve; "
        f"serve({str(model_dir)!r}, adapters={{'x': {str(adapter)!r}}}, port={port}, "
        "api_key='k', threads=1)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        models = httpx.get(f"{base}/v1/models", headers=headers).json()
        assert [m["id"] for m in models["data"]] == [str(model_dir), "x"]
        body = {"model": "x", "messages": QUESTION, "max_tokens": 3, "temperature": 0}
        reply = httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert reply.json()["usage"]["completion_tokens"] == 3
        assert _listening_addresses(port) == {"127.0.0.1"}  # loopback only, by default
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on `port`, read from /proc/net/tcp."""
    import socket
    import struct

    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
            found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


def test_stream_true_answers_as_one_event_stream_chunk(server):
    _, api_base = server
    body = {"model": "sql-intern", "messages": QUESTION, "max_tokens": 5, "stream": True}
    body["temperature"] = 0  # greedy: a sampled token of the random model can be its EOS
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{api_base}/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunk = json.loads(events[0])
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"][0]["delta"]["role"] == "assistant"
    assert chunk["usage"]["completion_tokens"] == 5
