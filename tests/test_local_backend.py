"""The local backend on a tiny random model: batching, sampling controls, adapters, JSON."""

from __future__ import annotations

import asyncio
import json
import time

import jsonschema
import pytest
import torch
from local_tiny_model import build_lora_adapter, build_tiny_model

from assay.curate.llm.types import ChatRequest, InvalidRequestError
from assay.models.local_backend import LocalBackend
from assay.models.registry import ModelRegistry

PROMPTS = [
    "Hi",
    "What is the weather in Paris today, and should I bring an umbrella?",
    "red green blue",
    "SELECT * FROM t WHERE x = 1; explain this query to me in plain words please",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model_dir = build_tiny_model(root / "model")
    registry = ModelRegistry(root / "registry.json")
    registry.register_model("tiny", model_dir)
    registry.register_adapter("a", build_lora_adapter(model_dir, root / "lora-a", seed=1), "tiny")
    registry.register_adapter("b", build_lora_adapter(model_dir, root / "lora-b", seed=2), "tiny")
    backend = LocalBackend("tiny", registry=registry, device="cpu", gather_s=0.2, threads=1)
    backend.load()
    yield backend
    backend.close()


def request(content: str, model: str = "local/tiny", system: str | None = None, **params):
    params.setdefault("temperature", 0)
    params.setdefault("max_tokens", 12)
    messages = [{"role": "user", "content": content}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return ChatRequest(model=model, messages=tuple(messages), params=params)


@pytest.mark.parametrize(
    "system",
    [None, "You are a terse assistant. Answer the weather question in plain words."],
    ids=["no-shared-prefix", "shared-system-prompt"],
)
def test_batched_greedy_matches_one_prompt_at_a_time_generate(tiny, system):
    """Left padding, the shared-prefix cache and the KV cache must not change greedy picks."""
    responses = tiny.complete_many([request(p, system=system) for p in PROMPTS])
    model, tokenizer = tiny.model, tiny.tokenizer
    for prompt, response in zip(PROMPTS, responses, strict=True):
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False)
        expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert response.text == expected
        assert response.input_tokens == ids["input_ids"].shape[1]


def test_shared_prefix_is_found_only_where_it_is_safe():
    from assay.models.batch_generate import GenerationItem, _shared_prefix_len

    common = list(range(10, 30))
    items = [GenerationItem(common + [1, 2]), GenerationItem(common + [3])]
    assert _shared_prefix_len(items) == 20
    assert _shared_prefix_len([GenerationItem(common), GenerationItem(common)]) == 19
    mixed = [GenerationItem(common + [1], adapter="a"), GenerationItem(common + [1])]
    assert _shared_prefix_len(mixed) == 20  # one prefix pass per adapter
    assert _shared_prefix_len([GenerationItem([1, 2, 3, 4]), GenerationItem([1, 2, 3, 5])]) == 0


def test_concurrent_calls_share_a_batch(tiny):
    before = tiny.batches_run

    async def many():
        return await asyncio.gather(
            *(tiny.complete(request(f"{p} {i}")) for i, p in enumerate(PROMPTS * 3))
        )

    responses = asyncio.run(many())
    assert len(responses) == 12
    assert all(r.text is not None for r in responses)
    assert tiny.batches_run - before < 12
    assert tiny.largest_batch >= 2


def test_max_tokens_and_length_finish(tiny):
    response = tiny.complete_many([request("Hi", max_tokens=5)])[0]
    assert response.output_tokens == 5
    assert response.finish_reason == "length"


def test_stop_sequence_cuts_the_text(tiny):
    free = tiny.complete_many([request(PROMPTS[1], max_tokens=20)])[0].text
    stop = free[6:9]
    assert stop and stop in free
    cut = tiny.complete_many([request(PROMPTS[1], max_tokens=20, stop=[stop])])[0]
    assert cut.text == free[: free.index(stop)]
    assert cut.finish_reason == "stop"


def test_seeds_make_sampling_reproducible_and_samples_differ(tiny):
    def sample(seed, index):
        r = request(PROMPTS[1], temperature=1.0, seed=seed, max_tokens=16)
        r = ChatRequest(r.model, r.messages, r.params, sample_index=index)
        return tiny.complete_many([r])[0].text

    assert sample(7, 0) == sample(7, 0)
    assert len({sample(7, i) for i in range(4)}) > 1
    greedy = tiny.complete_many([request(PROMPTS[1], max_tokens=16)])[0].text
    assert len({sample(None, 0) for _ in range(3)} | {greedy}) > 1


def test_tiny_top_p_is_greedy(tiny):
    greedy = tiny.complete_many([request(PROMPTS[3], max_tokens=10)])[0].text
    nucleus = tiny.complete_many([request(PROMPTS[3], max_tokens=10, temperature=1.0, top_p=1e-6)])
    assert nucleus[0].text == greedy


def test_top_k_one_is_greedy(tiny):
    greedy = tiny.complete_many([request(PROMPTS[2], max_tokens=10)])[0].text
    top1 = tiny.complete_many([request(PROMPTS[2], max_tokens=10, temperature=1.5, top_k=1)])
    assert top1[0].text == greedy


def test_mixed_adapter_batch_matches_each_adapter_alone(tiny):
    models = ["local/tiny", "local/tiny+a", "local/tiny+b", "local/tiny+a"]
    prompt = PROMPTS[1]
    alone = [tiny.complete_many([request(prompt, model=m)])[0].text for m in models]
    assert len(set(alone)) == 3  # base, a and b answer differently
    before = tiny.most_adapters_in_batch
    together = tiny.complete_many([request(prompt, model=m) for m in models])
    assert [r.text for r in together] == alone
    assert max(before, tiny.most_adapters_in_batch) == 3


def test_adapter_rows_match_peft_as_reference(tiny):
    """Each row's adapter output equals peft's own LoRA model, greedy, token for token."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for name in ("a", "b"):
        spec = tiny.registry.resolve(f"tiny+{name}")
        reference = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(spec.source), spec.adapter
        ).eval()
        mixed = [request(p, model=f"local/tiny+{name}") for p in PROMPTS[:2]]
        mixed.append(request(PROMPTS[2]))  # a base row in the same batch
        responses = tiny.complete_many(mixed)
        for prompt, response in zip(PROMPTS[:2], responses, strict=False):
            text = tiny.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = tiny.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                out = reference.generate(**ids, max_new_tokens=12, do_sample=False)
            expected = tiny.tokenizer.decode(
                out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
            )
            assert response.text == expected


def test_a_bad_request_fails_alone_not_its_batch(tiny):
    bad = ChatRequest(
        model="local/tiny",
        messages=({"role": "user", "content": "Hi"},),
        params={"max_tokens": 4},
        response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}},
    )
    good = request("Hi", max_tokens=4)
    futures = [tiny.submit(r) for r in (good, bad, good)]
    assert futures[0].result().output_tokens == 4
    assert futures[2].result().output_tokens == 4
    with pytest.raises(InvalidRequestError, match="nope"):  # never retried by the client
        futures[1].result()


def test_unknown_adapter_is_refused(tiny):
    with pytest.raises(ValueError, match="unknown adapter"):
        tiny.submit(request("Hi", model="local/tiny+nope"))


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "city": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
    },
    "required": ["color", "ok", "city", "tags"],
    "additionalProperties": False,
}


def test_constrained_json_is_always_schema_valid(tiny):
    """A random model produces garbage; under the grammar it still produces valid JSON."""
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}
    reqs = [
        ChatRequest(
            model="local/tiny",
            messages=({"role": "user", "content": p},),
            params={"temperature": 1.0, "seed": i, "max_tokens": 200},
            response_format=fmt,
            sample_index=i,
        )
        for i, p in enumerate(PROMPTS * 4)
    ]
    free = tiny.complete_many([ChatRequest(r.model, r.messages, r.params) for r in reqs[:4]])
    assert not any(_valid(r.text) for r in free)
    for response in tiny.complete_many(reqs):
        assert response.finish_reason == "stop"
        assert _valid(response.text), response.text


def _valid(text: str | None) -> bool:
    try:
        jsonschema.validate(json.loads(text or ""), SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Paris", "Rome"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
)


def test_required_tool_choice_returns_openai_tool_calls(tiny):
    r = ChatRequest(
        model="local/tiny",
        messages=({"role": "user", "content": "Weather in Rome?"},),
        params={
            "temperature": 0.8,
            "seed": 3,
            "max_tokens": 200,
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        tools=TOOLS,
    )
    response = tiny.complete_many([r])[0]
    assert response.finish_reason == "tool_calls"
    assert len(response.tool_calls) == 1
    call = response.tool_calls[0]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["city"] in {"Paris", "Rome"}


def test_allowed_tools_choice_calls_only_the_allowed_tools(tiny):
    clock = {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"enum": ["Oslo", "Lima"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }

    def ask(name: str, seed: int) -> ChatRequest:
        choice = {
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": name}}],
            },
        }
        params = {"temperature": 1.0, "seed": seed, "max_tokens": 200, "tool_choice": choice}
        return ChatRequest(
            model="local/tiny",
            messages=({"role": "user", "content": "Weather or time?"},),
            params={**params, "parallel_tool_calls": False},
            tools=(*TOOLS, clock),
        )

    # one batch, rows allowed different tools; the prompt offers both to every row
    responses = tiny.complete_many(
        [ask(n, s) for s in range(3) for n in ("get_time", "get_weather")]
    )
    names = [r.tool_calls[0]["function"]["name"] for r in responses]
    assert names == ["get_time", "get_weather"] * 3
    cities = {json.loads(r.tool_calls[0]["function"]["arguments"])["city"] for r in responses}
    assert cities <= {"Oslo", "Lima", "Paris", "Rome"}


def test_llm_client_routes_local_model_strings_to_the_shared_backend(tmp_path, monkeypatch):
    from assay.curate.llm.client import LLMClient, LLMSettings
    from assay.models.registry import register_model
    from assay.models.shared_backends import get_local_backend, register_local_backend

    monkeypatch.setenv("ASSAY_MODEL_CACHE", str(tmp_path / "cache"))
    register_model("tiny-client", build_tiny_model(tmp_path / "model"))
    register_local_backend()
    client = LLMClient(LLMSettings(model="local/tiny-client"))
    reqs = [request(p, model="local/tiny-client", max_tokens=6) for p in PROMPTS]
    responses = asyncio.run(client.complete_many(reqs))
    backend = get_local_backend("local/tiny-client")
    assert client.backend is backend
    assert [r.output_tokens for r in responses] == [6, 6, 6, 6]
    assert backend.batches_run >= 1
    backend.close()


def _long_requests(rows: int = 8) -> list[ChatRequest]:
    """Requests that decode 900 tokens each (EOS ignored): a batch still running when the
    test stops it."""
    return [
        request(f"{PROMPTS[i % len(PROMPTS)]} {i}", max_tokens=900, ignore_eos=True)
        for i in range(rows)
    ]


def test_close_with_cancel_stops_the_batch_in_progress(tiny):
    from assay.models.batch_generate import GenerationCancelled

    backend = LocalBackend("tiny", registry=tiny.registry, device="cpu", gather_s=0.05, threads=1)
    backend.load()
    futures = [backend.submit(r) for r in _long_requests()]
    while not any(f.running() or f.done() for f in futures):
        time.sleep(0.001)
    backend.close(cancel=True, timeout=60)
    for future in futures:
        with pytest.raises(GenerationCancelled):
            future.result(timeout=0)
    # a cancelled backend answers no more
    with pytest.raises(GenerationCancelled):
        backend.submit(request("Hi")).result(timeout=60)
    assert backend.batches_run == 0


CTRL_C_SCRIPT = """
import sys, time
from pathlib import Path
from assay.models.local_backend import LocalBackend
from assay.models.registry import ModelRegistry
from assay.curate.llm.types import ChatRequest

registry = ModelRegistry.load(Path(sys.argv[1]))
backend = LocalBackend("tiny", registry=registry, device="cpu", threads=1)
backend.load()
message = ({"role": "user", "content": "Hi"},)
params = {"max_tokens": 900, "ignore_eos": True, "temperature": 0}
futures = [backend.submit(ChatRequest("local/tiny", message, params)) for _ in range(8)]
while not futures[0].running():
    time.sleep(0.001)
raise KeyboardInterrupt  # the run is stopped while the worker decodes
"""


def test_exit_during_a_batch_cancels_it_instead_of_aborting(tmp_path):
    """Leaving Python while the scheduler thread decodes (Ctrl-C in a run) exits as an
    interrupted Python does (killed by SIGINT), not by SIGABRT: the batch is cancelled at
    exit. The model is wide enough (hidden size 1024) that the thread spends its time
    inside torch's matmuls, where being ended by the exiting interpreter aborts."""
    import signal
    import subprocess
    import sys

    from local_tiny_model import build_tokenizer, tiny_llama_config
    from transformers import LlamaForCausalLM

    model_dir = tmp_path / "wide"
    tokenizer = build_tokenizer(model_dir)
    config = tiny_llama_config(
        tokenizer, hidden_size=1024, intermediate_size=4096, num_attention_heads=8
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    registry = ModelRegistry.load(tmp_path / "registry.json")
    registry.register_model("tiny", model_dir)
    script = tmp_path / "interrupted.py"
    script.write_text(CTRL_C_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(registry.path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "KeyboardInterrupt" in done.stderr
    assert "terminate called" not in done.stderr
    assert done.returncode == -signal.SIGINT, done.stderr[-2000:]
