"""GroundingJudge: split a response into atomic claims and check each against the context."""

from __future__ import annotations

import json
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field, create_model

from assay.curate.registry import register
from assay.judges.llm_judge import Call, Judgement, LLMJudge

Label = Literal["supported", "unsupported", "contradicted"]


class Claim(BaseModel):
    claim: str = Field(description="one atomic factual statement from the response")
    label: Label
    evidence: str = Field(default="", description="the context sentence it rests on, if any")


def answer_model(max_claims: int) -> type[BaseModel]:
    """The verdict schema: at most `max_claims` claims (bounds a small model's output)."""
    return create_model("GroundingAnswer", claims=(list[Claim], Field(max_length=max_claims)))


def context_text(value: Any) -> str:
    """One context string from a string or a list of passages (numbered)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    passages = [str(v) for v in value if v is not None]
    return "\n\n".join(f"[Passage {i + 1}] {p}" for i, p in enumerate(passages))


def grounding_call(context: str, response: str, question: str | None, max_claims: int) -> Call:
    """The request that splits `response` into claims and labels each against `context`."""
    parts = [
        "Check a response against its context. Split the response into atomic factual "
        f"claims (at most {max_claims}) and label each one: 'supported' if the "
        "context states or directly implies it, 'contradicted' if the context says "
        "otherwise, 'unsupported' if the context does not say. Use only the context, "
        "not your own knowledge.",
        f"[Context]\n{context}",
    ]
    if question is not None:
        parts.append(f"[Question]\n{question}")
    parts += [
        f"[Response]\n{response}",
        'Answer with JSON only: {"claims": [{"claim": "...", "label": "supported" | '
        '"unsupported" | "contradicted", "evidence": "..."}]}',
    ]
    return Call([{"role": "user", "content": "\n\n".join(parts)}], answer_model(max_claims))


def claims_judgement(claims: list[Claim]) -> Judgement:
    """Score (grounded fraction), verdict and rationale of one response's labelled claims."""
    listed = [c.model_dump() for c in claims]
    bad = [c.claim for c in claims if c.label != "supported"]
    if not claims:
        return Judgement(
            1.0,
            "no claims",
            "no factual claim to check",
            extra={"claims": "[]", "unsupported": "[]", "n_claims": 0},
        )
    score = (len(claims) - len(bad)) / len(claims)
    if not bad:
        verdict = "grounded"
    elif any(c.label == "contradicted" for c in claims):
        verdict = "contradicted"
    else:
        verdict = "unsupported"
    rationale = f"{len(claims) - len(bad)} of {len(claims)} claims supported"
    if bad:
        rationale += "; not supported: " + "; ".join(bad)
    return Judgement(
        score,
        verdict,
        rationale,
        extra={
            "claims": json.dumps(listed, ensure_ascii=False),
            "unsupported": json.dumps(bad, ensure_ascii=False),
            "n_claims": len(claims),
        },
    )


@register
class GroundingJudge(LLMJudge):
    """Hallucination check: each claim of the response is supported, unsupported or
    contradicted by the row's context (a string or a list of passages).

    The score is the grounded fraction (supported claims / claims; a response with no
    factual claim scores 1.0, verdict "no claims"). The verdict is "grounded" when every
    claim is supported, else "contradicted" when any claim is, else "unsupported".

    Input columns: `context_column` (string or list of strings), `response_column`,
    `prompt_column` (optional: the question the response answers).
    Output columns (output_column="grounding"): `grounding_score`, `grounding_verdict`,
    `grounding_rationale`, `grounding_claims` (JSON list of {claim, label, evidence}),
    `grounding_unsupported` (JSON list of the unsupported or contradicted claims),
    `grounding_n_claims` (int), `grounding_error`, `grounding_cost`.
    Rejects (when `threshold` is set): "unsupported (score 0.50 < 1): 1 of 2 claims ...".

    Example: `GroundingJudge(model="local/smollm2-135m", context_column="document",
    response_column="summary", threshold=1.0)` drops summaries with any unsupported claim.
    """

    output_column: str = "grounding"
    context_column: str = "context"
    response_column: str = "generation"
    prompt_column: str | None = None
    max_claims: int = 12

    def row_columns(self) -> list[str]:
        cols = [self.context_column, self.response_column]
        return cols + ([self.prompt_column] if self.prompt_column else [])

    def extra_types(self) -> dict[str, pa.DataType]:
        return {"claims": pa.string(), "unsupported": pa.string(), "n_claims": pa.int64()}

    def calls(self, row: dict[str, Any]) -> list[Call]:
        question = row[self.prompt_column] if self.prompt_column else None
        context = context_text(row[self.context_column])
        return [grounding_call(context, row[self.response_column], question, self.max_claims)]

    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        return claims_judgement(answers[0].claims)  # type: ignore[attr-defined]

    def reward_row(self, prompt: Any, completion: Any, columns: dict[str, Any]) -> dict[str, Any]:
        if self.context_column not in columns:
            raise KeyError(
                f"GroundingJudge.reward needs the dataset column {self.context_column!r}"
            )
        row = super().reward_row(prompt, completion, columns)
        row[self.response_column] = row["response"]
        if self.prompt_column:
            row[self.prompt_column] = row["prompt"]
        return row
