"""Find and repair the JSON inside a model's answer.

Models wrap JSON in code fences, add prose (and other brackets: "see [1]") around it, leave
trailing commas, write Python literals (True, None, single quotes) or stop mid-object at
max_tokens. `json_candidates` lists every JSON object or array in an answer, best first;
`extract_json` returns the best and raises ValueError with a reason when nothing parses.

Locating values is done here (code fences first, then every `{` / `[` in the prose); a
value that does not parse as it stands is repaired by `json-repair` (a maintained
library that works token by token, so it never rewrites the inside of a string).

    extract_json('Sure! ```json\\n{"a": 1,}\\n``` Hope that helps')  ->  {"a": 1}
    extract_json('See [1]. {"a": 1}')  ->  {"a": 1}
"""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair

FENCE = re.compile(r"```(?:json|JSON|javascript)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
# a value cut off after a key or a comma (`{"a": 1, "b": `): the dangling part is dropped
DANGLING = re.compile(r'(,\s*"[^"]*"\s*:\s*|,\s*)$')
# bound the work on answers full of brackets (each start is a parse attempt)
MAX_STARTS = 64

_DECODER = json.JSONDecoder()


def extract_json(text: str | None, prefer: str | None = None) -> Any:
    """The best JSON object or array in `text` (see `json_candidates`), repaired if needed."""
    return json_candidates(text, prefer)[0]


def json_candidates(text: str | None, prefer: str | None = None, repair: bool = True) -> list[Any]:
    """Every JSON object or array in `text`, best first; ValueError when there is none.

    `repair=False` keeps only values that parse as they stand: for an answer cut at
    max_tokens, where repairing would invent the end of a value (`{"city": "Par` ->
    `{"city": "Par"}`).

    Order: values inside code fences before values in the prose; then values of the
    `prefer`red type ("object" or "array", e.g. the schema's top-level type); then longer
    before shorter (a citation `[1]` loses to the object after it); then values that parse
    as they stand before repaired ones; then text order.
    """
    if text is None or not text.strip():
        raise ValueError("empty answer")
    sources = [m.group(1) for m in FENCE.finditer(text) if m.group(1).strip()]
    ranked: list[tuple[tuple[int, int, int, int, int], Any]] = []
    errors: list[str] = []
    for rank, source in enumerate([*sources, text]):
        fenced = 0 if rank < len(sources) else 1
        for start, length, repaired, value in _values(source, errors):
            if repaired and not repair:
                errors.append("the answer was cut at max_tokens and its JSON is not whole")
                continue
            kind = "object" if isinstance(value, dict) else "array"
            off_type = 0 if prefer is None or prefer == kind else 1
            key = (fenced, off_type, -length, int(repaired), rank * 10**9 + start)
            ranked.append((key, value))
    if not ranked:
        if errors:
            raise ValueError(f"invalid JSON: {errors[-1]}")
        raise ValueError("no JSON object or array in the answer")
    ranked.sort(key=lambda item: item[0])
    return [value for _, value in ranked]


def _values(text: str, errors: list[str]) -> list[tuple[int, int, bool, Any]]:
    """(start, length, repaired, value) for each top-level JSON value in `text`."""
    found: list[tuple[int, int, bool, Any]] = []
    i, starts = 0, 0
    while starts < MAX_STARTS:
        i = _next_bracket(text, i)
        if i < 0:
            break
        starts += 1
        try:
            value, end = _DECODER.raw_decode(text, i)
            found.append((i, end - i, False, value))
            i = end
            continue
        except json.JSONDecodeError as exc:
            error = f"{exc.msg} at char {exc.pos - i}"
        except RecursionError:
            error = "nested too deeply"
        span = _span_at(text, i)
        value = _repair(span, errors, error)
        if value is not None:
            found.append((i, len(span), True, value))
            i += len(span)
        else:
            i += 1
    return found


def _next_bracket(text: str, start: int) -> int:
    hits = [p for p in (text.find("{", start), text.find("[", start)) if p >= 0]
    return min(hits) if hits else -1


def _repair(span: str, errors: list[str], strict_error: str) -> dict | list | None:
    trimmed = DANGLING.sub("", span.rstrip())
    try:
        value = json_repair.loads(trimmed)
    except RecursionError:
        errors.append("nested too deeply")
        return None
    except Exception as exc:  # the library's own failure is this answer's failure
        errors.append(f"{strict_error} (repair failed: {exc})")
        return None
    # an empty container out of a non-empty span means nothing was recovered (`{]`)
    if not isinstance(value, dict | list) or not value:
        errors.append(strict_error)
        return None
    return value


def _span_at(text: str, start: int) -> str:
    """From the bracket at `start` to its matching close (or the end, if cut off)."""
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
