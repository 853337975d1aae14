"""Find and repair the JSON inside a model's answer.

Models wrap JSON in code fences, add prose before or after it, leave trailing commas,
write Python literals (True, None, single quotes) or stop mid-object at max_tokens.
`extract_json` handles those and raises ValueError with a reason when nothing parses.

    extract_json('Sure! ```json\\n{"a": 1,}\\n``` Hope that helps')  ->  {"a": 1}
"""

from __future__ import annotations

import json
import re
from typing import Any

FENCE = re.compile(r"```(?:json|JSON|javascript)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
TRAILING_COMMA = re.compile(r",(\s*[}\]])")
PY_LITERALS = {"True": "true", "False": "false", "None": "null"}


def extract_json(text: str | None) -> Any:
    """The first JSON object or array in `text`, repaired if needed."""
    if text is None or not text.strip():
        raise ValueError("empty answer")
    candidates = [m.group(1) for m in FENCE.finditer(text) if m.group(1).strip()]
    candidates.append(text)
    errors: list[str] = []
    for candidate in candidates:
        span = _first_value(candidate)
        if span is None:
            continue
        for attempt in (span, repair(span)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError as exc:
                errors.append(f"{exc.msg} at char {exc.pos}")
            except RecursionError:
                errors.append("nested too deeply")
    if not errors:
        raise ValueError("no JSON object or array in the answer")
    raise ValueError(f"invalid JSON: {errors[-1]}")


def _first_value(text: str) -> str | None:
    """From the first `{` or `[` to its matching close (or the end, if cut off)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    depth = 0
    quote: str | None = None
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return text[start:]


def repair(text: str) -> str:
    """Fix common breakage: single quotes, Python literals, trailing commas, cut-off ends."""
    out: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if escaped:
                escaped = False
                out.append(ch)
            elif ch == "\\":
                escaped = True
                out.append(ch)
            elif ch == quote:
                quote = None
                out.append('"')
            elif ch == '"' and quote == "'":
                out.append('\\"')
            elif ch == "\n":
                out.append("\\n")
            else:
                out.append(ch)
        elif ch in "\"'":
            quote = ch
            out.append('"')
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            out.append(ch)
        elif ch in "}]":
            if stack:
                stack.pop()
            out.append(ch)
        elif ch.isalpha():
            j = i
            while j < len(text) and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            out.append(PY_LITERALS.get(word, word))
            i = j
            continue
        else:
            out.append(ch)
        i += 1
    if quote:
        out.append('"')
    fixed = "".join(out).rstrip()
    # a value cut off after a key or a comma: drop the dangling part before closing
    fixed = re.sub(r'(,\s*"[^"]*"\s*:\s*|,\s*)$', "", fixed)
    fixed += "".join(reversed(stack))
    return TRAILING_COMMA.sub(r"\1", fixed)
