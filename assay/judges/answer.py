"""AnswerVerifier: is a model's final answer (a number or a short string) the gold one?

Deterministic, no LLM. The final answer is taken from the candidate in this order: the last
`\\boxed{...}`, the last `#### N` (GSM8K's format), the last "answer is X" / "Answer: X", or
else the whole text. The gold value goes through the same extraction, so a GSM8K solution
("... #### 72") can be the gold column as it is.

Numbers are compared as values: thousands separators ("1,234"), decimals, fractions ("3/4",
"\\frac{3}{4}", "1 1/2"), percentages ("50%" equals 50 and 0.5), scientific notation, a
unicode minus, currency signs and trailing units ("12 cm", "$1,200") are understood.
Strings are compared case-, whitespace- and surrounding-punctuation-insensitively.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from assay.curate.registry import register
from assay.judges.base import Verdict, Verifier

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:final answer|answer)\s*(?:is|:|=)\s*[:\s]*(.+?)\s*(?:$|\n|\.\s|\.$)", re.IGNORECASE
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
# a number: optional sign, thousands-grouped or plain digits, decimals, exponent, then an
# optional "/denominator" (a fraction) and an optional percent sign
_NUM = re.compile(
    r"(?<![\w.])(?P<sign>[-+])?\s*"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<dec>\.\d+)?(?P<exp>[eE][-+]?\d+)?"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?"
    r"(?P<pct>\s*(?:%|\\%|percent\b))?"
)
_MIXED = re.compile(r"(?<![\w.])(?P<sign>-)?(?P<whole>\d+)\s+(?P<num>\d+)\s*/\s*(?P<den>\d+)")
_LATEX_NOISE = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}|\\[,;! ]|\\left|\\right")
_LATEX_THOUSANDS = re.compile(r"(?<=\d)\\[,!]\s*(?=\d{3}(?!\d))")
_WRAPPERS = "$`*_\"' \t\n"


@dataclass(frozen=True)
class _Number:
    value: Fraction
    percent: bool
    text: str


def final_answer(text: str) -> str:
    """The final-answer span of a response (see the module docstring for the order)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    gsm = _GSM8K.findall(text)
    if gsm:
        return gsm[-1].strip()
    said = _ANSWER_IS.findall(text)
    if said:
        return said[-1].strip()
    return text.strip()


def _last_boxed(text: str) -> str | None:
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]  # unbalanced: take the rest rather than nothing


def _clean(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ")
    text = _LATEX_THOUSANDS.sub(",", text)  # "1\\,000" is LaTeX for 1,000
    text = _FRAC.sub(r"(\1)/(\2)", text)
    text = text.replace("(", "").replace(")", "")
    text = _LATEX_NOISE.sub(lambda m: m.group(1) or " ", text)
    return text


def numbers(text: str) -> list[_Number]:
    """Every number in `text`, in order, with its value (exact, as a Fraction)."""
    text = _clean(text)
    found: list[_Number] = []
    pos = 0
    for mixed in _MIXED.finditer(text):
        found.extend(_plain_numbers(text[pos : mixed.start()]))
        whole, num, den = (int(mixed.group(k)) for k in ("whole", "num", "den"))
        if den != 0 and num < den:
            value = whole + Fraction(num, den)
            found.append(_Number(-value if mixed.group("sign") else value, False, mixed.group(0)))
        else:
            found.extend(_plain_numbers(mixed.group(0)))
        pos = mixed.end()
    found.extend(_plain_numbers(text[pos:]))
    return found


def _plain_numbers(text: str) -> list[_Number]:
    found = []
    for m in _NUM.finditer(text):
        if m.group("int") is None and m.group("dec") is None:
            continue
        mantissa = (m.group("int") or "0").replace(",", "") + (m.group("dec") or "")
        try:
            value = Fraction(mantissa) * (Fraction(10) ** int((m.group("exp") or "e0")[1:]))
            if m.group("den"):
                den = Fraction(m.group("den"))
                if den == 0:
                    continue
                value /= den
        except (ValueError, ZeroDivisionError, OverflowError):
            continue
        if m.group("sign") == "-":
            value = -value
        found.append(_Number(value, bool(m.group("pct")), m.group(0).strip()))
    return found


def normalize_text(text: str) -> str:
    """Lower case, LaTeX text wrappers and surrounding punctuation removed, spaces collapsed."""
    text = _LATEX_NOISE.sub(lambda m: m.group(1) or " ", text)
    text = re.sub(r"\s+", " ", text.lower()).strip(_WRAPPERS + ".,;:!?")
    return text.strip()


def _close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    if a == b:
        return True
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)


@register
class AnswerVerifier(Verifier):
    """Mark whether a response's final answer matches the gold answer; drop the misses.

    Modes: `auto` compares numerically when the gold answer holds a number, else as text;
    `numeric` always compares numbers (the candidate's last number in its final answer);
    `normalized` compares text case-, space- and punctuation-insensitively; `exact` compares
    the extracted final answer with the gold one as written (outer whitespace aside).
    Numeric comparison is exact for integers and fractions, within `rel_tol` / `abs_tol`
    otherwise; a percentage matches either its number or its share ("50%" = 50 = 0.5).

    Input columns: `column` (string, the response), `gold_column` (string or number).
    Output columns: `output_column` (bool), `<output_column>_score` (1.0 / 0.0),
    `<output_column>_reason` (string).
    Rejects (when `drop_incorrect`): "wrong answer (got X, gold Y)" or "no answer (gold Y)".

    Example: `AnswerVerifier(column="generation", gold_column="answer")` keeps
    `{"generation": "so the total is \\boxed{1,200}", "answer": "1200"}` and rejects
    `{"generation": "#### 8", "answer": 7}` with "wrong answer (got 8, gold 7)".
    """

    mode: Literal["auto", "numeric", "normalized", "exact"] = "auto"
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9

    def check(self, candidate: Any, gold: Any, row: dict[str, Any]) -> Verdict:
        gold_text = final_answer(_as_text(gold))
        got_text = final_answer(_as_text(candidate))
        if not got_text:
            return Verdict(False, 0.0, f"no answer (gold {gold_text or 'none'})")
        mode = self.mode
        gold_numbers = numbers(gold_text) if mode in ("auto", "numeric") else []
        if mode == "auto":
            mode = "numeric" if gold_numbers else "normalized"
        if mode == "numeric":
            return self._numeric(got_text, gold_text, gold_numbers)
        if mode == "normalized":
            same = normalize_text(got_text) == normalize_text(gold_text)
        else:
            same = got_text == gold_text
        return _verdict(same, got_text, gold_text)

    def _numeric(self, got_text: str, gold_text: str, gold_numbers: list[_Number]) -> Verdict:
        if not gold_numbers:
            return Verdict(False, 0.0, f"gold answer has no number (gold {gold_text})")
        got_numbers = numbers(got_text)
        if not got_numbers:
            return Verdict(
                False, 0.0, f"no number in the answer (got {got_text}, gold {gold_text})"
            )
        got, want = got_numbers[-1], gold_numbers[-1]
        candidates = {got.value}
        if got.percent:
            candidates.add(got.value / 100)
        if want.percent:
            candidates.add(got.value * 100)
        same = any(_close(c, want.value, self.rel_tol, self.abs_tol) for c in candidates)
        return _verdict(same, got.text, want.text)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _verdict(same: bool, got: str, gold: str) -> Verdict:
    if same:
        return Verdict(True, 1.0, f"correct (got {got}, gold {gold})")
    return Verdict(False, 0.0, f"wrong answer (got {got}, gold {gold})")
