"""The parse steps on their own: JSON extraction and repair, tool calls, reasoning, regex."""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.curate.stage import Outcome
from assay.operators.jsontext import extract_json
from assay.operators.parse import ParseReasoning, ParseRegex, ParseToolCalls

# no backticks inside values: a value holding a code fence is legitimately ambiguous
TEXT = st.text(alphabet=st.characters(blacklist_characters="`"), max_size=10)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    value=st.dictionaries(TEXT, JSON, max_size=5),
    prose=st.sampled_from(["", "Sure! ", "Here:\n"]),
)
def test_json_survives_fences_and_prose(value: dict, prose: str) -> None:
    text = f"{prose}```json\n{json.dumps(value)}\n```\nHope this helps."
    assert extract_json(text) == value
    assert extract_json(f"{prose}{json.dumps(value)} -- done") == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),
        ("{'a': 'x', 'ok': True, 'none': None}", {"a": "x", "ok": True, "none": None}),
        ('{"a": 1, "b": "cut off her', {"a": 1, "b": "cut off her"}),
        ('{"a": {"b": [1, 2', {"a": {"b": [1, 2]}}),
        ('{"a": 1, "b": ', {"a": 1}),
        ('{"text": "it\'s \\"quoted\\""}', {"text": 'it\'s "quoted"'}),
    ],
)
def test_common_breakage_is_repaired(text: str, expected: object) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", None, "no json here", "{]"])
def test_unusable_answers_raise_with_a_reason(text: str | None) -> None:
    with pytest.raises(ValueError):
        extract_json(text)


def test_parse_tool_calls_from_provider_and_from_text() -> None:
    native = json.dumps(
        [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
    )
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "generation": [
                None,
                '<tool_call>{"name": "mul", "arguments": {"x": 2}}</tool_call>',
                "plain",
            ],
            "generation_tool_calls": [native, None, None],
        }
    )
    out = ParseToolCalls().process(table)
    assert out["tool_calls"].to_pylist() == [
        [{"name": "add", "arguments": '{"a": 1}'}],
        [{"name": "mul", "arguments": '{"x": 2}'}],
        [],
    ]


def test_parse_reasoning_prefers_the_provider_field_and_think_blocks() -> None:
    table = pa.table(
        {
            "id": ["a", "b", "c"],
            "generation": ["<think>plan</think>\nanswer A", "answer B", "answer C"],
            "generation_reasoning": [None, "given", None],
        }
    )
    out = ParseReasoning().process(table)
    assert out["answer"].to_pylist() == ["answer A", "answer B", "answer C"]
    assert out["reasoning"].to_pylist() == ["plan", "given", None]


def test_parse_regex_extracts_named_groups_and_rejects_misses() -> None:
    table = pa.table({"id": ["a", "b", "c"], "generation": ["Answer: 42", "no idea", None]})
    out = ParseRegex(pattern=r"Answer:\s*(?P<answer>-?\d+)").process(table)
    assert isinstance(out, Outcome)
    assert out.kept["answer"].to_pylist() == ["42"]
    assert out.rejected["id"].to_pylist() == ["b", "c"]
    kept_all = ParseRegex(pattern=r"Answer:\s*(?P<answer>\d+)", reject_unmatched=False).process(
        table
    )
    assert isinstance(kept_all, pa.Table)
    assert kept_all["answer"].to_pylist() == ["42", None, None]


def test_an_answer_cut_at_max_tokens_is_not_repaired_into_a_value() -> None:
    from pydantic import BaseModel

    from assay.operators.parse import ParseStructured

    class City(BaseModel):
        city: str

    cut = '{"city": "Par'
    stage = ParseStructured(column="generation", output_schema=City, max_reasks=0)
    assert stage.validate_text(cut) == ({"city": "Par"}, None)  # a finished answer is repaired
    value, error = stage.validate_text(cut, cut=True)
    assert value is None and "cut at max_tokens" in error
    # whole JSON in a cut answer (the chatter after it was cut) still counts
    assert stage.validate_text('{"city": "Paris"} and then', cut=True) == ({"city": "Paris"}, None)
    table = pa.table(
        {
            "id": ["a", "b"],
            "generation": [cut, cut],
            "generation_finish_reason": ["length", "stop"],
        }
    )
    outcome = asyncio.run(stage.aprocess(table))
    assert outcome.kept["id"].to_pylist() == ["b"]
    assert outcome.rejected["id"].to_pylist() == ["a"]
