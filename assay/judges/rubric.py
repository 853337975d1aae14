"""RubricJudge: score a response on named criteria, each on a scale, with a rationale."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, create_model, model_validator

from assay.curate.registry import register
from assay.judges.llm_judge import Call, Judgement, LLMJudge, VerdictError


class Criterion(BaseModel):
    name: str
    description: str


class Rubric(BaseModel):
    """Criteria on a common integer scale; `needs_reference` asks for a reference answer."""

    criteria: list[Criterion]
    scale: tuple[int, int] = (1, 5)
    task: str = "Rate the response to the user's request."
    needs_reference: bool = False

    @model_validator(mode="after")
    def _valid(self) -> Rubric:
        if not self.criteria:
            raise ValueError("a rubric needs at least one criterion")
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale {self.scale}: the low end must be below the high end")
        return self


RUBRICS: dict[str, Rubric] = {
    "helpfulness": Rubric(
        criteria=[
            Criterion(name="relevance", description="addresses what the user asked"),
            Criterion(name="completeness", description="covers every part of the request"),
            Criterion(name="clarity", description="clear, well organised, no padding"),
        ],
    ),
    "correctness": Rubric(
        task="Judge whether the response is correct, using the reference answer as ground truth.",
        criteria=[
            Criterion(
                name="correctness",
                description="agrees with the reference answer on every fact and on the result",
            ),
            Criterion(name="no_extra_errors", description="adds no false statements"),
        ],
        needs_reference=True,
    ),
    "instruction_following": Rubric(
        criteria=[
            Criterion(
                name="constraints",
                description="obeys every explicit instruction (format, length, language, style)",
            ),
            Criterion(name="task", description="does the task asked, not a different one"),
        ],
    ),
    "reasoning": Rubric(
        task="Judge the quality of the reasoning that leads to the answer.",
        criteria=[
            Criterion(name="validity", description="each step follows from the previous ones"),
            Criterion(name="completeness", description="no needed step is skipped"),
            Criterion(name="conclusion", description="the final answer follows from the steps"),
        ],
    ),
}


def _field(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_") or "criterion"


@register
class RubricJudge(LLMJudge):
    """Score a response on each criterion of a rubric, then their mean on [0, 1].

    `rubric` is the name of a ready rubric (helpfulness, correctness, instruction_following,
    reasoning) or a `Rubric` (criteria with descriptions and a scale).

    Input columns: `prompt_column`, `response_column`, `reference_column` (for rubrics that
    need a reference, e.g. correctness).
    Output columns (output_column="judge"): `judge_score` (mean of the criteria rescaled to
    [0, 1]), `judge_verdict` ("pass" / "fail" against `threshold`, else 0.5),
    `judge_rationale`, `judge_criteria` (JSON: criterion -> score on the scale),
    `judge_error`, `judge_cost`.
    Rejects (when `threshold` is set): "fail (score 0.40 < 0.6): <rationale>".

    Example: `RubricJudge(model="openai/gpt-4o-mini", rubric="correctness",
    prompt_column="question", response_column="generation", reference_column="answer",
    threshold=0.75)`.
    """

    rubric: str | Rubric = "helpfulness"
    prompt_column: str = "prompt"
    response_column: str = "generation"
    reference_column: str | None = None

    def model_post_init(self, context: Any) -> None:
        rubric = self.resolved()
        if rubric.needs_reference and not self.reference_column:
            raise ValueError(f"rubric {self.rubric!r} needs reference_column (the gold answer)")

    def resolved(self) -> Rubric:
        if isinstance(self.rubric, Rubric):
            return self.rubric
        if self.rubric not in RUBRICS:
            raise ValueError(f"unknown rubric {self.rubric!r}; ready ones: {', '.join(RUBRICS)}")
        return RUBRICS[self.rubric]

    def row_columns(self) -> list[str]:
        cols = [self.prompt_column, self.response_column]
        return cols + ([self.reference_column] if self.reference_column else [])

    def answer_model(self) -> type[BaseModel]:
        rubric = self.resolved()
        low, high = rubric.scale
        fields: dict[str, Any] = {"rationale": (str, Field(description="brief justification"))}
        for c in rubric.criteria:
            fields[_field(c.name)] = (int, Field(ge=low, le=high, description=c.description))
        return create_model("RubricAnswer", **fields)

    def calls(self, row: dict[str, Any]) -> list[Call]:
        rubric = self.resolved()
        low, high = rubric.scale
        lines = [f"- {_field(c.name)}: {c.description}" for c in rubric.criteria]
        parts = [
            "\n".join(
                [rubric.task, f"Score each criterion from {low} (worst) to {high} (best):", *lines]
            ),
            f"[Request]\n{row[self.prompt_column]}",
        ]
        if self.reference_column:
            parts.append(f"[Reference answer]\n{row[self.reference_column]}")
        parts += [
            f"[Response]\n{row[self.response_column]}",
            'Answer with JSON only: {"rationale": "...", '
            + ", ".join(f'"{_field(c.name)}": <{low}-{high}>' for c in rubric.criteria)
            + "}",
        ]
        return [Call([{"role": "user", "content": "\n\n".join(parts)}], self.answer_model())]

    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        rubric = self.resolved()
        low, high = rubric.scale
        values = answers[0].model_dump()
        scores = {_field(c.name): values[_field(c.name)] for c in rubric.criteria}
        if not scores:
            raise VerdictError("no criterion scores")
        score = sum((s - low) / (high - low) for s in scores.values()) / len(scores)
        cut = self.threshold if self.threshold is not None else 0.5
        verdict = "pass" if score >= cut else "fail"
        return Judgement(score, verdict, values["rationale"], extra={"criteria": scores})

    def reward_row(self, prompt: Any, completion: Any, columns: dict[str, Any]) -> dict[str, Any]:
        row = super().reward_row(prompt, completion, columns)
        row[self.prompt_column] = row["prompt"]
        row[self.response_column] = row["response"]
        if self.reference_column and self.reference_column not in columns:
            raise KeyError(f"RubricJudge.reward needs the dataset column {self.reference_column!r}")
        return row
