"""Split a reasoning trace into its reasoning and its final answer, and the reasoning into steps.

Reasoning comes from the provider (`reasoning_content`, `<think>` blocks: the
`generation_reasoning` column `Generate` writes) or, for a chain-of-thought prompt, from the
text before the last answer marker ("Final answer:", "The answer is", "#### ", `\\boxed{}`).

    >>> split_trace("3 apples and 4 more.\\nFinal answer: 7", None)
    ('3 apples and 4 more.', '7')
    >>> [s["step_id"] for s in segment_steps("a.\\nb.", "q1/s0")]
    ['q1/s0#0', 'q1/s0#1']
"""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa

from assay.judges.answer import final_answer as answer_span
from assay.judges.answer import numbers

# the last of these starts the final answer (case-insensitive); \boxed{} is found by
# assay.judges.answer.final_answer inside the answer part
_MARKER = re.compile(
    r"(?im)(?:^|(?<=[\s.:]))(?:final answer\s*[:：]|the (?:final )?answer is\b|answer\s*:|####)"
)
_BOXED = re.compile(r"\\boxed\s*\{")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")

STEP = pa.struct([("step_id", pa.string()), ("text", pa.string())])
STEPS = pa.list_(STEP)

StepUnit = Literal["line", "sentence"]


def split_trace(text: str | None, reasoning: str | None) -> tuple[str, str]:
    """(reasoning, final answer) of one sample.

    With a separate `reasoning` (the provider's or `<think>` blocks), `text` is the answer
    part; otherwise the reasoning is the text before the last answer marker. The final answer
    is the marked span (`\\boxed{}`, `#### N`, "answer is X") of the answer part, else its
    first non-empty line. No marker and no separate reasoning: the last line is the answer
    (of a one-line text, its last number, the line being the reasoning).
    """
    text = (text or "").strip()
    reasoning = (reasoning or "").strip()
    if reasoning:
        return reasoning, _answer_of(text)
    markers = list(_MARKER.finditer(text))
    boxed = list(_BOXED.finditer(text))
    if markers or boxed:
        cut = max([m.start() for m in markers] + [_line_start(text, b.start()) for b in boxed])
        return text[:cut].strip(), _answer_of(text[cut:])
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return "\n".join(lines[:-1]).strip(), lines[-1].strip()
    # one line ("12 + 13 = 25"): the line is the reasoning, its last number the answer
    found = numbers(text)
    if found:
        return text, found[-1].text
    return "", text


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _answer_of(part: str) -> str:
    part = part.strip()
    if not part:
        return ""
    span = answer_span(part)
    if span != part:  # a marker was found: its span is the answer
        return span.strip().rstrip(".")
    return next((line.strip() for line in part.splitlines() if line.strip()), "")


def segment_steps(reasoning: str | None, row_id: str, unit: StepUnit = "line") -> list[dict]:
    """Steps of a reasoning text, each `{"step_id": "<row id>#<k>", "text": ...}`.

    `line`: one step per non-empty line (a "Step k:" or "k." label starts a new step, and a
    single-line trace falls back to sentences); `sentence`: one step per sentence.
    """
    text = (reasoning or "").strip()
    if not text:
        return []
    if unit == "sentence":
        parts = _sentences(text)
    elif unit == "line":
        parts = [line.strip() for line in text.splitlines() if line.strip()]
        if len(parts) == 1:
            parts = _sentences(parts[0])
    else:
        raise ValueError(f"unknown step unit {unit!r}; use 'line' or 'sentence'")
    return [{"step_id": f"{row_id}#{k}", "text": part} for k, part in enumerate(parts)]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]
