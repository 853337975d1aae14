"""ToolCallVerifier: BFCL-style matching with reordered, typed and optional arguments,
parallel calls in any order, and state checks."""

from __future__ import annotations

import json

import pyarrow as pa

from assay.judges.tool_calls import ToolCallVerifier


def call(name: str, **arguments: object) -> dict:
    return {
        "id": "c",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


TOOLS = json.dumps(
    [
        {
            "type": "function",
            "function": {
                "name": "book",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "nights": {"type": "integer"},
                        "budget": {"type": "number"},
                        "late": {"type": "boolean"},
                    },
                    "required": ["city", "nights"],
                },
            },
        }
    ]
)
GOLD = [
    {
        "book": {
            "city": ["New York", "NYC"],
            "nights": [2],
            "budget": [100.0, ""],
            "late": [False, ""],
        }
    }
]


def check(candidates: list[object], gold: object = GOLD, **kw: object) -> pa.Table:
    n = len(candidates)
    table = pa.table(
        {
            "id": [str(i) for i in range(n)],
            "generation_tool_calls": [json.dumps(c) for c in candidates],
            "gold_calls": [json.dumps(gold)] * n,
            "tools": [TOOLS] * n,
        }
    )
    out = ToolCallVerifier(tools_column="tools", drop_incorrect=False, **kw).process(table)
    assert isinstance(out, pa.Table)
    return out


def test_reordered_normalised_and_optional_arguments_match() -> None:
    out = check(
        [
            [call("book", nights=2, city="new york")],  # optional ones left out, case
            [call("book", budget=100, city="N.Y.C", nights=2)],  # int for a float; punctuation
            [call("book", late=False, budget=100.0, nights=2, city="New-York")],
        ]
    )
    assert out["correct"].to_pylist() == [True, True, True], out["correct_reason"].to_pylist()


def test_wrong_types_values_and_extra_or_missing_arguments_do_not_match() -> None:
    out = check(
        [
            [call("book", city="New York", nights=2.0)],  # a float where an integer is declared
            [call("book", city="New York", nights="2")],  # a string for an integer
            [call("book", city="Boston", nights=2)],
            [call("book", city="New York")],  # required nights missing
            [call("book", city="New York", nights=2, pets=True)],  # unknown parameter
            [call("book", city="New York", nights=2, late=0)],  # 0 is not False
            [call("stay", city="New York", nights=2)],
        ]
    )
    assert out["correct"].to_pylist() == [False] * 7
    reasons = out["correct_reason"].to_pylist()
    assert "nights=2.0 is not one of [2]" in reasons[0]
    assert "city='Boston'" in reasons[2]
    assert "missing parameter 'nights'" in reasons[3]
    assert "unexpected parameter 'pets'" in reasons[4]
    assert "no call to book" in reasons[6]


def test_parallel_calls_match_in_any_order_one_to_one() -> None:
    gold = [{"add": {"a": [1], "b": [2]}}, {"add": {"a": [3], "b": [4]}}]
    out = check(
        [
            [call("add", a=3, b=4), call("add", b=2, a=1)],
            [call("add", a=1, b=2), call("add", a=1, b=2)],  # the same call twice
            [call("add", a=1, b=2)],
        ],
        gold=gold,
    )
    assert out["correct"].to_pylist() == [True, False, False]
    assert out["correct_score"].to_pylist() == [1.0, 0.5, 0.5]
    assert out["correct_reason"][2].as_py() == "1 calls, expected 2"


def test_candidates_from_messages_or_tool_call_text_and_openai_gold() -> None:
    gold = [call("add", a=1, b=2.5)]
    messages = [
        {"role": "user", "content": "add"},
        {"role": "assistant", "content": "", "tool_calls": [call("add", b=2.5, a=1)]},
    ]
    text = '<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2.5}}]</tool_call>'
    table = pa.table(
        {
            "id": ["m", "t", "x"],
            "generation_tool_calls": [json.dumps(messages), text, "no call here"],
            "gold_calls": [json.dumps(gold)] * 3,
        }
    )
    out = ToolCallVerifier(drop_incorrect=False).process(table)
    assert out["correct"].to_pylist() == [True, True, False]


def test_state_checks_compare_the_final_state() -> None:
    table = pa.table(
        {
            "id": ["same", "diff"],
            "generation_tool_calls": [None, None],
            "gold_calls": [None, None],
            "state": [json.dumps({"fuel": 10.0, "doors": ["locked"]}), json.dumps({"fuel": 9})],
            "expected": [json.dumps({"fuel": 10, "doors": ["locked"]}), json.dumps({"fuel": 10})],
        }
    )
    verifier = ToolCallVerifier(state_column="state", expected_state_column="expected")
    outcome = verifier.process(table)
    assert outcome.kept["id"].to_pylist() == ["same"]
    assert outcome.reason_array().to_pylist() == ["final state differs from the expected state"]
