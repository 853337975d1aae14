"""BFCL call strings: written from and read into OpenAI tool calls, and a turn's calls
checked against the ground truth's (by function name, or with their arguments).

BFCL's executor and checker read calls as Python source, `name(key=value, ...)`; the
ground truth writes some arguments positionally, named here from the function doc.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Literal

from assay.datasets import bfcl
from assay.judges.tool_calls import candidate_calls, match_calls, schema_types

_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")


def call_string(name: str, arguments: dict[str, Any]) -> str:
    """A tool call in BFCL's executable form, `name(key=repr(value),...)` (as BFCL's
    `convert_to_function_call` writes it). Names and keys must be identifiers: the executor
    evaluates the string, and values are Python literals through repr."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a function name")
    bad = [k for k in arguments if not _IDENTIFIER.match(str(k))]
    if bad:
        raise ValueError(f"argument names {bad!r} are not identifiers")
    return f"{name}({','.join(f'{k}={v!r}' for k, v in arguments.items())})"


def call_name(call: str) -> str:
    """The function name of a call string such as `get_watchlist()`."""
    return call.split("(", 1)[0].strip()


def openai_call(call: str, docs: list[dict[str, Any]], index: int = 0) -> dict[str, Any]:
    """A ground-truth call string (`mv(source='a', destination='b')`, positional arguments
    named from the function doc) as an OpenAI tool call, for replaying BFCL's answers."""
    node = ast.parse(call, mode="eval").body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"not a function call: {call!r}")
    name = node.func.id
    doc = next((d for d in docs if d["name"] == name), None)
    order = list((doc or {}).get("parameters", {}).get("properties", {}))
    if len(node.args) > len(order):
        raise ValueError(f"{call!r}: more positional arguments than {name} has parameters")
    arguments = {order[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    arguments.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg})
    return {
        "id": f"call_gt_{index}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def gold_with_defaults(
    call: dict[str, Any], docs: list[dict[str, Any]]
) -> tuple[str, dict[str, list[Any]]]:
    """A ground-truth call as (name, {parameter: acceptable values}): its own values, and
    for each parameter it leaves out, absence or the function doc's default (BFCL writes
    `'None'` for a default of None)."""
    name = call["function"]["name"]
    arguments = json.loads(call["function"]["arguments"])
    want: dict[str, list[Any]] = {p: [v] for p, v in arguments.items()}
    doc = next((d for d in docs if d["name"] == name), {})
    for param, spec in (doc.get("parameters", {}).get("properties") or {}).items():
        if param not in want and "default" in spec:
            default = spec["default"]
            want[param] = ["", default] + ([None] if default == "None" else [])
    return name, want


def ground_truth_miss(
    made: list[str],
    gold: list[str],
    docs: list[dict[str, Any]],
    by: Literal["names", "arguments"] = "names",
) -> str | None:
    """Why the calls `made` in a turn miss the turn's ground-truth calls `gold` (a suffix
    for "turn k", e.g. `" did not call get_watchlist"`), or None when they do not.
    `names`: every function the ground truth calls was called. `arguments`: each
    ground-truth call is matched one to one by a made call with its name and arguments
    (`ToolCallVerifier`'s matching; an omitted parameter allowed absent or at its
    documented default); extra calls are allowed either way."""
    if by == "arguments":
        got = candidate_calls([openai_call(c, docs) for c in made])
        want = [gold_with_defaults(openai_call(c, docs), docs) for c in gold]
        schemas = schema_types([bfcl.openai_tool(d) for d in docs])
        matched, miss = match_calls(got, want, schemas)
        return None if matched == len(want) else f": {miss}"
    missing = sorted({call_name(c) for c in gold} - {call_name(c) for c in made})
    return f" did not call {', '.join(missing)}" if missing else None
