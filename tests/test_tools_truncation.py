"""Constrained JSON and tool calls cut at max_tokens, on a tiny random model: the row says
`finish_reason="length"`, its text is the cut JSON prefix, and no layer (the local backend's
tool-call parser, ParseToolCalls, ToolRollouts) turns it into a call the model did not
finish; a value completed by the last budgeted token is whole (`"stop"` / `"tool_calls"`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from local_tiny_model import registered_tiny_model

from assay.curate.llm.types import ChatRequest
from assay.models.chat_format import chat_response, parse_tool_calls
from assay.operators.parse import ParseToolCalls
from assay.operators.tools.episode import cut_tool_call
from assay.operators.tools.rollouts import ToolRollouts

ALIAS = "tiny-cut"  # not "tiny": the shared local backends are keyed by alias
TOOLS = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"enum": ["Paris", "Rome", "Lyon"]},
                    "days": {"enum": [1, 2, 3]},
                },
                "required": ["city", "days"],
                "additionalProperties": False,
            },
        },
    },
)
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    from assay.models.shared_backends import get_local_backend

    with registered_tiny_model(tmp_path_factory.mktemp("cut"), alias=ALIAS):
        local = get_local_backend(f"local/{ALIAS}")
        local.load()
        yield local
        local.close()


def ask(backend: Any, max_tokens: int, json_mode: bool) -> Any:
    params: dict[str, Any] = {"temperature": 0, "max_tokens": max_tokens}
    extra: dict[str, Any] = {}
    if json_mode:
        extra["response_format"] = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    else:
        params.update(tool_choice="required", parallel_tool_calls=False)
        extra["tools"] = TOOLS
    request = ChatRequest(
        model=f"local/{ALIAS}",
        messages=({"role": "user", "content": "Weather in Rome for two days?"},),
        params=params,
        **extra,
    )
    return backend.complete_many([request])[0]


def loads(text: str | None) -> Any:
    try:
        return json.loads(text or "")
    except json.JSONDecodeError:
        return None


@pytest.mark.parametrize("json_mode", [True, False], ids=["response_format", "tool_choice"])
def test_every_budget_gives_a_whole_value_or_a_marked_cut_prefix(backend, json_mode) -> None:
    whole = ask(backend, 200, json_mode)
    n = whole.output_tokens  # the value's tokens (the stop token is not counted)
    assert whole.finish_reason == ("stop" if json_mode else "tool_calls")
    full_text = whole.text if json_mode else None
    if not json_mode:
        (call,) = whole.tool_calls
        assert call["function"]["name"] == "get_weather"
        assert set(json.loads(call["function"]["arguments"])) == {"city", "days"}
    # the last budgeted token completes the value: whole, not "length"
    exact = ask(backend, n, json_mode)
    assert exact.finish_reason == whole.finish_reason
    assert (exact.text, exact.tool_calls) == (whole.text, whole.tool_calls)
    for budget in sorted({1, 2, 3, n // 3, n // 2, n - 2, n - 1}):  # each call costs seconds
        cut = ask(backend, budget, json_mode)
        assert cut.finish_reason == "length", budget
        assert cut.output_tokens == budget
        assert cut.tool_calls is None, (budget, cut.tool_calls)
        assert loads(cut.text) is None, (budget, cut.text)  # invalid JSON, shown as such
        if full_text is not None:
            assert full_text.startswith(cut.text), budget


def test_the_tool_call_parser_returns_no_call_from_a_cut_answer() -> None:
    first = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    cut = first + '\n<tool_call>{"name": "g", "arguments": {"city": "Par'
    # not cut: the broken block is skipped, the whole one kept (as before)
    assert [c["function"]["name"] for c in parse_tool_calls(cut)[1]] == ["f"]
    # cut at max_tokens: the calls before the cut are not the whole answer
    assert parse_tool_calls(cut, truncated=True) == (cut, None)
    response = chat_response(cut, "length", True, 10, 20, 0.1)
    assert (response.finish_reason, response.tool_calls, response.text) == ("length", None, cut)
    # cut after a whole call (prose rambled on): the call is whole and returned, still "length"
    rambling = first + " and then I will"
    response = chat_response(rambling, "length", True, 10, 20, 0.1)
    assert response.finish_reason == "length"
    assert [c["function"]["name"] for c in response.tool_calls] == ["f"]
    assert chat_response(first, "stop", True, 10, 20, 0.1).finish_reason == "tool_calls"


def test_parse_tool_calls_stage_never_repairs_a_cut_call() -> None:
    texts = [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Par',  # cut
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}',  # tag cut only
        '<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>',  # closed, repairable
    ]
    table = ParseToolCalls().map(pa.table({"generation": texts}))
    calls = table["tool_calls"].to_pylist()
    assert calls[0] == []
    assert calls[1] == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert calls[2] == [{"name": "add", "arguments": '{"a": 1}'}]


def test_cut_tool_call_tells_cut_calls_from_cut_prose() -> None:
    whole = [{"function": {"name": "f", "arguments": '{"x": 1}'}}]
    cut = [{"function": {"name": "f", "arguments": '{"x": "ab'}}]
    assert cut_tool_call("length", "", cut, None)  # a provider's cut arguments
    assert not cut_tool_call("length", "", whole, None)
    assert cut_tool_call("length", '[{"name": "f", "argu', [], "required")
    assert cut_tool_call("length", '[{"name": "f"', [], {"type": "function", "function": {}})
    assert cut_tool_call("length", 'Sure <tool_call>{"name": "f"', [], None)
    assert not cut_tool_call("length", "The answer is forty", [], None)  # cut prose
    assert not cut_tool_call("length", "The answer is", [], "auto")
    assert not cut_tool_call("stop", '[{"name": "f"', [], "required")


def test_a_forced_call_cut_at_max_tokens_ends_the_episode_unexecuted(
    backend, workspace: Path, tmp_path: Path
) -> None:
    from assay.curate.pipeline import Pipeline
    from assay.operators.tools.sql_demo import build_shop

    shop = str(build_shop(tmp_path / "shop.duckdb"))
    task = {
        "id": "lyon",
        "question": "How many customers live in Lyon?",
        "gold_sql": "SELECT COUNT(*) FROM customers WHERE home_city = 'Lyon'",
    }

    def run(max_tokens: int, ws: Path) -> dict[str, Any]:
        stage = ToolRollouts(
            model=f"local/{ALIAS}",
            environment="sql",
            environment_kwargs={"database": shop},
            force_tools=["list_tables", "none"],
            max_turns=2,
            max_tokens=max_tokens,
            temperature=0.0,
            generation_kwargs={"parallel_tool_calls": False},  # one call: a short value
        )
        (row,) = (
            Pipeline([stage]).run([task], workspace=ws, progress="quiet").to_arrow().to_pylist()
        )
        return row

    row = run(5, workspace)
    assert (row["finish"], row["turns"], row["correct"]) == ("length", 1, False)
    messages = row["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]  # nothing executed
    assert messages[1]["tool_calls"] is None and loads(messages[1]["content"]) is None
    assert messages[1]["content"].startswith("[{")
    (call,) = json.loads(row["episode"])["calls"]
    assert (call["finish_reason"], call["truncated"], call["output_tokens"]) == ("length", True, 5)
    assert json.loads(row["episode"])["final_state"]["tool_sequence"] == []
    # with room to finish, the same forced call runs and its result goes back to the model
    row = run(64, workspace.parent / "ws2")
    assert row["finish"] != "length"
    assert [m["role"] for m in row["messages"]][:3] == ["user", "assistant", "tool"]
    assert row["messages"][1]["tool_calls"][0]["function"]["name"] == "list_tables"
    assert json.loads(row["episode"])["calls"][0]["finish_reason"] == "tool_calls"
