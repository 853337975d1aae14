"""StepJudge: find the first wrong step of a reasoning trace, with a reason (a process reward)."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from assay.curate.registry import register
from assay.judges.llm_judge import Call, Judgement, LLMJudge, VerdictError, numbered

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


class StepAnswer(BaseModel):
    first_wrong_step: int = Field(description="index of the first wrong step, -1 if none")
    reason: str


def split_steps(text: str | None) -> list[str]:
    """Steps of a trace: paragraphs, else lines, else sentences."""
    text = (text or "").strip()
    if not text:
        return []
    for pattern in (r"\n\s*\n", r"\n"):
        parts = [p.strip() for p in re.split(pattern, text) if p.strip()]
        if len(parts) > 1:
            return parts
    return [p.strip() for p in _SENTENCE.split(text) if p.strip()]


@register
class StepJudge(LLMJudge):
    """Judge a reasoning trace step by step and name the first wrong step and why.

    Steps come from `steps_column` (the traces contract: list<struct<step_id, text>>) when
    the table has it, else from splitting `reasoning_column` (paragraphs, lines, sentences).
    Score: the share of steps before the first wrong one (1.0 when none is wrong); the step
    rewards (1.0 before the first wrong step, 0.0 from it on) are a process reward.

    Input columns: `question_column`, `reasoning_column` or `steps_column`,
    `answer_column` (optional gold answer shown to the judge).
    Output columns (output_column="step"): `step_score`, `step_verdict` ("correct" or
    "wrong at step k"), `step_rationale` (the reason), `step_first_wrong` (int, null when
    none), `step_first_wrong_id` (the step_id, null when none), `step_rewards`
    (list<double>), `step_n_steps`, `step_error`, `step_cost`.
    Rejects (when `threshold` is set; threshold=1.0 keeps only fully correct traces).

    Example: `StepJudge(model="openai/gpt-4o", question_column="question",
    answer_column="answer", threshold=1.0)` after `ReasoningTraces`.
    """

    output_column: str = "step"
    question_column: str = "question"
    reasoning_column: str = "reasoning"
    steps_column: str = "steps"
    answer_column: str | None = None

    _use_steps: bool = False

    def row_columns(self) -> list[str]:
        cols = [
            self.question_column,
            self.steps_column if self._use_steps else self.reasoning_column,
        ]
        return cols + ([self.answer_column] if self.answer_column else [])

    def check_columns(self, table: pa.Table) -> None:
        self._use_steps = self.steps_column in table.column_names
        super().check_columns(table)

    async def aprocess(self, table: pa.Table) -> Any:
        self._use_steps = self.steps_column in table.column_names
        return await super().aprocess(table)

    def extra_types(self) -> dict[str, pa.DataType]:
        return {
            "first_wrong": pa.int64(),
            "first_wrong_id": pa.string(),
            "rewards": pa.list_(pa.float64()),
            "n_steps": pa.int64(),
        }

    def steps(self, row: dict[str, Any]) -> list[tuple[str | None, str]]:
        if self._use_steps and row.get(self.steps_column) is not None:
            return [(s.get("step_id"), str(s.get("text") or "")) for s in row[self.steps_column]]
        return [(None, s) for s in split_steps(row.get(self.reasoning_column))]

    def calls(self, row: dict[str, Any]) -> list[Call]:
        steps = [text for _, text in self.steps(row)]
        parts = [
            "Check a step-by-step solution. Find the FIRST step that is wrong (a false "
            "statement, a calculation error, an invalid inference); later steps that build on "
            "it do not count. If every step is right, answer -1.",
            f"[Problem]\n{row[self.question_column]}",
        ]
        if self.answer_column:
            parts.append(f"[Correct final answer]\n{row[self.answer_column]}")
        parts += [
            f"[Steps]\n{numbered(steps, 'Step')}",
            'Answer with JSON only: {"first_wrong_step": <step index or -1>, "reason": "..."}',
        ]
        return [Call([{"role": "user", "content": "\n\n".join(parts)}], StepAnswer)]

    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        answer: StepAnswer = answers[0]  # type: ignore[assignment]
        steps = self.steps(row)
        n = len(steps)
        wrong = answer.first_wrong_step
        if not -1 <= wrong < n:
            raise VerdictError(f"first_wrong_step {wrong} is not a step (the trace has {n})")
        if n == 0:
            return Judgement(None, "error", "", error="the trace has no steps")
        if wrong == -1:
            rewards = [1.0] * n
            return Judgement(
                1.0,
                "correct",
                answer.reason,
                extra={
                    "first_wrong": None,
                    "first_wrong_id": None,
                    "rewards": rewards,
                    "n_steps": n,
                },
            )
        rewards = [1.0] * wrong + [0.0] * (n - wrong)
        return Judgement(
            wrong / n,
            f"wrong at step {wrong}",
            answer.reason,
            extra={
                "first_wrong": wrong,
                "first_wrong_id": steps[wrong][0],
                "rewards": rewards,
                "n_steps": n,
            },
        )

    def reward_row(self, prompt: Any, completion: Any, columns: dict[str, Any]) -> dict[str, Any]:
        self._use_steps = False
        row = super().reward_row(prompt, completion, columns)
        row[self.question_column] = row["prompt"]
        row[self.reasoning_column] = row["response"]
        return row
