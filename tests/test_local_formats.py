"""Model registry resolution and the chat-format helpers (prompts with tools, tool calls)."""

from __future__ import annotations

import json

import pytest
from local_tiny_model import build_tiny_model, build_tokenizer

from assay.models.chat_format import parse_tool_calls, render_prompt, tool_call_schema
from assay.models.constrained import schema_of
from assay.models.registry import (
    EMBEDDED_ALIAS,
    INSTALL_HINT,
    ModelNotFoundError,
    ModelRegistry,
    embedded_gguf_path,
)


def test_registry_resolves_aliases_paths_and_adapters(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    registry = ModelRegistry(tmp_path / "registry.json")
    registry.register_model("tiny", model_dir)
    assert registry.register_adapter("sql", adapter, base="tiny") == "tiny+sql"

    reloaded = ModelRegistry.load(tmp_path / "registry.json")  # persisted for other processes
    spec = reloaded.resolve("local/tiny+sql")
    assert spec.source == model_dir.resolve() and spec.adapter == adapter.resolve()
    assert spec.adapter_name == "sql" and spec.base_name == "tiny"
    assert reloaded.resolve(str(model_dir)).source == model_dir.resolve()
    assert reloaded.resolve(EMBEDDED_ALIAS).source == embedded_gguf_path()


def test_missing_models_say_how_to_install_and_never_download(tmp_path):
    registry = ModelRegistry(tmp_path / "registry.json")
    with pytest.raises(ModelNotFoundError) as err:
        registry.resolve("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert INSTALL_HINT in str(err.value) and "never downloads" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="no adapter"):
        registry.resolve(f"{EMBEDDED_ALIAS}+nothing")
    with pytest.raises(ModelNotFoundError, match="not a PEFT adapter"):
        registry.register_adapter("x", tmp_path, base=EMBEDDED_ALIAS)


def test_response_format_forms():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert (
        schema_of({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    )
    assert schema_of(schema) == schema
    assert schema_of({"type": "json_object"}) is None


def test_parse_tool_calls_formats():
    text, calls = parse_tool_calls(
        'Sure. <tool_call>[{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]</tool_call>'
    )
    assert text == "Sure."
    assert [c["function"]["name"] for c in calls] == ["f", "g"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1}
    assert calls[0]["id"] != calls[1]["id"]

    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"y\\": 2}"}</tool_call>')
    assert json.loads(calls[0]["function"]["arguments"]) == {"y": 2}

    text, calls = parse_tool_calls('[{"name": "f", "arguments": {"x": 1}}]')
    assert text is None and calls[0]["function"]["name"] == "f"

    assert parse_tool_calls("just words") == ("just words", None)
    assert parse_tool_calls("<tool_call>not json</tool_call>") == (
        "<tool_call>not json</tool_call>",
        None,
    )


def test_render_prompt_puts_tools_and_past_calls_into_a_plain_template(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "sunny"},
    ]
    prompt = render_prompt(tokenizer, messages, tools)
    assert prompt.startswith("<|im_start|>system\n") and '"name": "get_weather"' in prompt
    assert (
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome"}}]</tool_call>' in prompt
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tool_call_schema_choices():
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "g"}},
    ]
    assert tool_call_schema(tools, "auto") is None
    assert "anyOf" in tool_call_schema(tools, "required")["items"]
    named = tool_call_schema(tools, {"type": "function", "function": {"name": "g"}})
    assert named["items"]["properties"]["name"] == {"const": "g"}
    with pytest.raises(ValueError):
        tool_call_schema(tools, {"type": "function", "function": {"name": "h"}})


def test_allowed_tools_choice_constrains_to_the_allowed_subset():
    tools = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
        for n in ("f", "g", "h")
    ]

    def allowed(mode: str, *names: str) -> dict:
        listed = [{"type": "function", "function": {"name": n}} for n in names]
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": listed}}

    two = tool_call_schema(tools, allowed("required", "f", "h"))
    names = [o["properties"]["name"]["const"] for o in two["items"]["anyOf"]]
    assert names == ["f", "h"]
    one = tool_call_schema(tools, allowed("required", "g"), parallel=False)
    assert one["items"]["properties"]["name"] == {"const": "g"} and one["maxItems"] == 1
    assert tool_call_schema(tools, allowed("auto", "g")) is None  # the model decides
    with pytest.raises(ValueError, match="none of which"):
        tool_call_schema(tools, allowed("required", "x"))
