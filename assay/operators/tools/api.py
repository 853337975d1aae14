"""Tools are Python callables; their JSON schemas come from type hints and Google docstrings.

    def run_query(sql: str, limit: int = 20) -> str:
        '''Run one read-only SELECT on the database.

        Args:
            sql: The query.
            limit: At most this many rows.
        '''

    tool_schema(run_query)
    # {"type": "function", "function": {"name": "run_query", "description": "Run one ...",
    #  "parameters": {"type": "object", "properties": {"sql": {"type": "string",
    #  "description": "The query."}, "limit": {...}}, "required": ["sql"]}}}

The schema is the one `transformers.utils.get_json_schema` builds (what TRL renders into the
chat template for `tools=[fn]` and `environment_factory`), without its `return` entry, and
without importing transformers. A parameter without a type hint or a description is an
error naming the function and the parameter.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Examples?)\s*:\s*$")
_ARG = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


class ToolSchemaError(TypeError):
    """A tool's signature or docstring cannot be turned into a JSON schema."""


def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method of a ToolEnvironment as a tool the model may call."""
    fn.__assay_tool__ = True  # type: ignore[attr-defined]
    return fn


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {argument: description}) from a Google-style docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    description: list[str] = []
    arguments: dict[str, str] = {}
    section = None
    current = None
    arguments_indent = 0
    for line in lines:
        heading = _SECTION.match(line)
        if heading:
            section, current = heading.group(1), None
            continue
        if section is None:
            description.append(line)
        elif section in ("Args", "Arguments"):
            match = _ARG.match(line)
            indent = len(line) - len(line.lstrip())
            if match and (current is None or indent <= arguments_indent):
                current, arguments_indent = match.group(1), indent
                arguments[current] = match.group(2).strip()
            elif current is not None and line.strip():
                arguments[current] = f"{arguments[current]} {line.strip()}".strip()
    return "\n".join(description).strip(), arguments


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of a type hint (str, int, float, bool, list[X], dict[str, X],
    tuple, Literal, Optional/unions)."""
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Literal:
        kinds = sorted({_SIMPLE.get(type(a), "string") for a in args})
        return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        schema = type_schema(options[0]) if len(options) == 1 else _union(options)
        if len(options) < len(args):
            schema["nullable"] = True
        return schema
    if hint is list or origin is list:
        return {"type": "array", **({"items": type_schema(args[0])} if args else {})}
    if hint is tuple or origin is tuple:
        if args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [type_schema(a) for a in args]}
        return {"type": "array", **({"items": type_schema(args[0])} if args else {})}
    if hint is dict or origin is dict:
        extra = {"additionalProperties": type_schema(args[1])} if len(args) == 2 else {}
        return {"type": "object", **extra}
    raise ToolSchemaError(f"cannot express the type {hint!r} as a JSON schema")


def _union(options: list[Any]) -> dict[str, Any]:
    schemas = [type_schema(o) for o in options]
    if all(set(s) == {"type"} for s in schemas):
        kinds: list[str] = []
        for s in schemas:
            kinds += s["type"] if isinstance(s["type"], list) else [s["type"]]
        return {"type": sorted(set(kinds), key=kinds.index)}
    return {"anyOf": schemas}


def tool_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The OpenAI tool schema of a callable (a function or a bound method)."""
    label = name or getattr(fn, "__name__", repr(fn))
    description, documented = parse_docstring(inspect.getdoc(fn))
    if not description:
        raise ToolSchemaError(f"tool {label!r} has no docstring description")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references
        raise ToolSchemaError(f"tool {label!r}: cannot read its type hints: {exc}") from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in hints:
            raise ToolSchemaError(f"tool {label!r}: parameter {param.name!r} has no type hint")
        if param.name not in documented:
            raise ToolSchemaError(
                f"tool {label!r}: parameter {param.name!r} is not described under Args:"
            )
        schema = type_schema(hints[param.name])
        schema["description"] = documented[param.name]
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {
        "type": "function",
        "function": {"name": label, "description": description, "parameters": parameters},
    }
