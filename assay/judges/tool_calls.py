"""ToolCallVerifier: BFCL-style matching of tool calls, and state checks for environments.

A gold call is written the way BFCL's `possible_answer` files write it: a function name and,
for each parameter, the list of acceptable values (`""` in the list means the parameter may
be left out). OpenAI `tool_calls` (arguments as JSON strings) are accepted as gold too; each
value is then the only acceptable one.

    gold = [{"get_weather": {"city": ["Paris", "paris, france"], "unit": ["celsius", ""]}}]

Values are compared the way BFCL's AST checker compares them: an integer is accepted where a
float is expected (never the reverse), booleans are not numbers, strings are compared after
lower-casing and removing spaces and `,./-_*^`, lists element by element, dicts key by key.
Parameter types come from the row's tool schemas when given (`tools_column`), otherwise from
the gold values. Parallel calls match in any order (each gold call to a different candidate).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from assay.curate.registry import register
from assay.judges.base import Verdict, Verifier

_STRIP = re.compile(r"[ ,./\-_*^]")
Call = tuple[str, dict[str, Any]]


def normalise_string(value: str) -> str:
    """BFCL's string standardisation: lower case, no spaces or `,./-_*^`, one quote style."""
    return _STRIP.sub("", value).lower().replace("'", '"')


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def candidate_calls(value: Any) -> list[Call]:
    """Tool calls from OpenAI `tool_calls`, chat messages, `{name, arguments}` dicts, a JSON
    string of any of these, or text with `<tool_call>` blocks."""
    value = _loads(value)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        from assay.models.chat_format import parse_tool_calls

        return candidate_calls(parse_tool_calls(value)[1])
    if isinstance(value, dict):
        value = [value]
    calls: list[Call] = []
    for item in value:
        if not isinstance(item, dict):
            continue
        if "role" in item:  # a chat message: its tool calls, if any
            calls.extend(candidate_calls(item.get("tool_calls")))
            continue
        function = item.get("function", item)
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            arguments = _loads(function.get("arguments", function.get("parameters", {})))
            calls.append((function["name"], arguments if isinstance(arguments, dict) else {}))
    return calls


def gold_calls(value: Any) -> list[tuple[str, dict[str, list[Any]]]]:
    """Gold calls as (name, {parameter: acceptable values}), from BFCL or OpenAI form."""
    value = _loads(value)
    if isinstance(value, dict):
        value = [value]
    out: list[tuple[str, dict[str, list[Any]]]] = []
    for item in value or []:
        if isinstance(item, dict) and ("function" in item or "name" in item):
            for name, arguments in candidate_calls([item]):
                out.append((name, {k: [v] for k, v in arguments.items()}))
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            out.append((name, {k: v if isinstance(v, list) else [v] for k, v in params.items()}))
        else:
            raise ValueError(f"cannot read gold tool call {item!r}")
    return out


def schema_types(tools: Any) -> dict[str, dict[str, Any]]:
    """{function name: {"properties": ..., "required": [...]}} from OpenAI tool schemas."""
    out: dict[str, dict[str, Any]] = {}
    for tool in _loads(tools) or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        if "name" in function:
            out[function["name"]] = function.get("parameters") or {}
    return out


def value_matches(got: Any, want: Any, expected_type: str | None = None) -> bool:
    """One value against one acceptable value, type-aware."""
    if expected_type is None:
        expected_type = _json_type(want)
    if expected_type == "integer":
        return isinstance(got, int) and not isinstance(got, bool) and got == want
    if expected_type == "number":
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return False
        if isinstance(want, bool) or not isinstance(want, (int, float)):
            return False
        return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-12)
    if expected_type == "boolean":
        return isinstance(got, bool) and got == want
    if expected_type == "string":
        return (
            isinstance(got, str)
            and isinstance(want, str)
            and (normalise_string(got) == normalise_string(want))
        )
    if expected_type == "array":
        if not isinstance(got, (list, tuple)) or not isinstance(want, (list, tuple)):
            return False
        return len(got) == len(want) and all(
            value_matches(g, w) for g, w in zip(got, want, strict=True)
        )
    if expected_type == "object":
        if not isinstance(got, dict) or not isinstance(want, dict):
            return False
        return _dict_matches(got, want)
    return got == want


def _dict_matches(got: dict[str, Any], want: dict[str, Any]) -> bool:
    # BFCL writes nested dict answers with a list of acceptable values per key
    for key, options in want.items():
        options = options if isinstance(options, list) else [options]
        if key not in got:
            if "" not in options:
                return False
            continue
        if not any(value_matches(got[key], o) for o in options if o != ""):
            return False
    return set(got) <= set(want)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def call_mismatch(
    got: Call, want: tuple[str, dict[str, list[Any]]], schema: dict[str, Any] | None
) -> str | None:
    """Why `got` does not match `want` (None when it does)."""
    name, arguments = got
    gold_name, gold_params = want
    if name != gold_name:
        return f"called {name}, expected {gold_name}"
    properties = (schema or {}).get("properties") or {}
    for param in arguments:
        if param not in gold_params:
            return f"{name}: unexpected parameter {param!r}"
    for param, options in gold_params.items():
        if param not in arguments:
            if "" in options:
                continue
            return f"{name}: missing parameter {param!r}"
        declared = (properties.get(param) or {}).get("type")
        declared = {"float": "number", "dict": "object", "tuple": "array"}.get(declared, declared)
        value = arguments[param]
        if not any(value_matches(value, o, declared) for o in options if o != ""):
            shown = [o for o in options if o != ""]
            return f"{name}: {param}={value!r} is not one of {shown!r}"
    return None


def match_calls(
    got: Sequence[Call],
    want: Sequence[tuple[str, dict[str, list[Any]]]],
    schemas: dict[str, dict[str, Any]] | None = None,
) -> tuple[int, str]:
    """How many gold calls the candidates match one to one (any order), and the first miss."""
    schemas = schemas or {}
    fits = [
        [call_mismatch(g, w, schemas.get(w[0]) if schemas else None) is None for g in got]
        for w in want
    ]
    # maximum bipartite matching (Kuhn); call lists are short
    owner: dict[int, int] = {}

    def assign(i: int, seen: set[int]) -> bool:
        for j, fit in enumerate(fits[i]):
            if fit and j not in seen:
                seen.add(j)
                if j not in owner or assign(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    matched = sum(assign(i, set()) for i in range(len(want)))
    first_miss = ""
    taken = set(owner.values())
    for i, w in enumerate(want):
        if i not in taken:
            reasons = [call_mismatch(g, w, schemas.get(w[0])) for g in got]
            same_name = [r for g, r in zip(got, reasons, strict=True) if g[0] == w[0]]
            first_miss = (same_name or [f"no call to {w[0]}"])[0] or f"{w[0]} matched twice"
            break
    return matched, first_miss


def states_equal(got: Any, want: Any, rel_tol: float = 1e-9) -> bool:
    """Deep equality of two JSON states, floats within `rel_tol`."""
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(states_equal(got[k], want[k]) for k in want)
    if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(
            states_equal(g, w) for g, w in zip(got, want, strict=True)
        )
    numbers = isinstance(got, (int, float)) and isinstance(want, (int, float))
    if numbers and (isinstance(got, float) or isinstance(want, float)):
        return math.isclose(got, want, rel_tol=rel_tol)
    return bool(got == want)


@register
class ToolCallVerifier(Verifier):
    """Check a model's tool calls against gold calls (BFCL style), and/or a final state.

    Input columns: `column` (the candidate's tool calls: OpenAI `tool_calls`, chat messages,
    or text with `<tool_call>` blocks; default `generation_tool_calls`, what `Generate`
    writes), `gold_column` (gold calls, BFCL `possible_answer` form or OpenAI form; may be
    null when only the state is checked), `tools_column` if set (the OpenAI tool schemas, for
    parameter types and required lists), `state_column` / `expected_state_column` if set
    (JSON states; the row is correct only if they are equal).
    Output columns: `output_column` (bool), `<output_column>_score` (share of gold calls
    matched, over the larger of the two call counts), `<output_column>_reason`.
    Rejects (when `drop_incorrect`): the first mismatch ("get_weather: unit='F' is not one
    of ['celsius']", "2 calls, expected 1", "final state differs from the expected state").

    Example:

        ToolCallVerifier(column="generation_tool_calls", gold_column="gold_calls")
        # candidate [{"function": {"name": "add", "arguments": '{"b": 2, "a": 1}'}}]
        # gold [{"add": {"a": [1], "b": [2.0]}}] -> correct (int accepted for a float)
    """

    column: str = "generation_tool_calls"
    gold_column: str = "gold_calls"
    tools_column: str | None = None
    state_column: str | None = None
    expected_state_column: str | None = None

    def model_post_init(self, context: Any) -> None:
        if bool(self.state_column) != bool(self.expected_state_column):
            raise ValueError("give both state_column and expected_state_column, or neither")

    def extra_columns(self) -> list[str]:
        names = (self.tools_column, self.state_column, self.expected_state_column)
        return [c for c in names if c]

    def check(self, candidate: Any, gold: Any, row: dict[str, Any]) -> Verdict:
        if self.state_column and self.expected_state_column:
            state = _loads(row.get(self.state_column))
            expected = _loads(row.get(self.expected_state_column))
            if not states_equal(state, expected):
                return Verdict(False, 0.0, "final state differs from the expected state")
            if gold is None:
                return Verdict(True, 1.0, "final state equals the expected state")
        got = candidate_calls(candidate)
        try:
            want = gold_calls(gold)
        except ValueError as exc:
            return Verdict(False, 0.0, str(exc))
        schemas = schema_types(row.get(self.tools_column)) if self.tools_column else {}
        matched, miss = match_calls(got, want, schemas)
        total = max(len(got), len(want))
        score = matched / total if total else 1.0
        if len(got) != len(want):
            return Verdict(False, score, f"{len(got)} calls, expected {len(want)}")
        if matched < len(want):
            return Verdict(False, score, miss)
        return Verdict(True, 1.0, f"{matched} calls match")
