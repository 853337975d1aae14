"""RelativeJudge: one call scores a group of samples of the same prompt against each other
(the RULER idea from OpenPipe's ART): rewards without labels, an explanation per sample."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from assay.curate.registry import register
from assay.judges.llm_judge import Call, Judgement, LLMJudge, VerdictError, numbered, run_sync


class SampleScore(BaseModel):
    sample: int
    score: float = Field(ge=0.0, le=1.0)
    explanation: str


class RelativeAnswer(BaseModel):
    scores: list[SampleScore]


@register
class RelativeJudge(LLMJudge):
    """Score the N samples of one prompt relative to each other, in one call per group.

    Rows are grouped by `group_column` (Generate with n > 1 writes `parent_id`, and emits a
    prompt's samples together in one batch; groups are formed within a batch). Each sample
    gets a score in [0, 1] and an explanation; a group whose answer misses a sample or scores
    one twice is unscored as a whole.

    Input columns: `group_column`, `prompt_column`, `response_column`.
    Output columns (output_column="relative"): `relative_score`, `relative_verdict`
    ("best" / "worst" / "middle" in its group, "only" for a group of one),
    `relative_rationale` (the sample's explanation), `relative_group_size`,
    `relative_error`, `relative_cost` (the group's call, charged to its first row).
    Rejects (when `threshold` is set): "worst (score 0.10 < 0.5): ...".
    As a reward: TRL's consecutive completions of one prompt form a group.

    Example: `RelativeJudge(model="openai/gpt-4o-mini",
    rubric="Which answer solves the task best?")` after `Generate(n=8)`.
    """

    output_column: str = "relative"
    group_column: str = "parent_id"
    prompt_column: str = "prompt"
    response_column: str = "generation"
    rubric: str = (
        "Score how well each response accomplishes the user's request: correct, complete, "
        "and no more verbose than needed. Compare them with each other: the best gets close "
        "to 1, clearly failed ones close to 0."
    )

    def row_columns(self) -> list[str]:
        return [self.group_column, self.prompt_column, self.response_column]

    def extra_types(self) -> dict[str, pa.DataType]:
        return {"group_size": pa.int64()}

    def calls(self, row: dict[str, Any]) -> list[Call]:
        raise TypeError("RelativeJudge makes one call per group, not per row")

    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        raise TypeError("RelativeJudge judges groups, not rows")

    def group_call(self, prompt: str, responses: list[str]) -> Call:
        text = (
            f"{self.rubric}\n\n[Request]\n{prompt}\n\n[Responses]\n"
            f"{numbered(responses, 'Sample')}\n\n"
            'Answer with JSON only: {"scores": [{"sample": <index>, "score": <0..1>, '
            '"explanation": "..."}, ...]} with one entry per sample.'
        )
        return Call([{"role": "user", "content": text}], RelativeAnswer)

    async def judge_rows(
        self, rows: list[dict[str, Any]], sample_index: int = 0
    ) -> list[Judgement]:
        from assay.judges.llm_judge import parse_answer

        groups: dict[Any, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row[self.group_column], []).append(i)
        members = list(groups.values())
        calls = [
            self.group_call(
                str(rows[m[0]][self.prompt_column] or ""),
                [str(rows[i][self.response_column] or "") for i in m],
            )
            for m in members
        ]
        responses = await self.client.complete_many([self.request(c, sample_index) for c in calls])
        out: list[Judgement | None] = [None] * len(rows)
        for m, call, response in zip(members, calls, responses, strict=True):
            try:
                scores = self._group_scores(parse_answer(response, call.answer), len(m))
            except VerdictError as exc:
                for i in m:
                    out[i] = Judgement(
                        None, "error", "", error=str(exc), extra={"group_size": len(m)}
                    )
                out[m[0]].cost = response.cost  # type: ignore[union-attr]
                continue
            values = [s.score for s in scores]
            for k, i in enumerate(m):
                out[i] = Judgement(
                    scores[k].score,
                    _rank(values, k),
                    scores[k].explanation,
                    extra={"group_size": len(m)},
                    cost=response.cost if k == 0 else 0.0,
                )
        return [j for j in out if j is not None]

    @staticmethod
    def _group_scores(answer: BaseModel, size: int) -> list[SampleScore]:
        by_sample: dict[int, SampleScore] = {}
        for s in answer.scores:  # type: ignore[attr-defined]
            if s.sample in by_sample:
                raise VerdictError(f"sample {s.sample} scored twice")
            by_sample[s.sample] = s
        missing = [k for k in range(size) if k not in by_sample]
        if missing or len(by_sample) != size:
            raise VerdictError(f"scores for samples {sorted(by_sample)}, expected 0..{size - 1}")
        return [by_sample[k] for k in range(size)]

    def reward(self, prompts: Any, completions: Any, **columns: Any) -> list[float | None]:
        from assay.judges.base import completion_text

        rows = [
            {
                self.group_column: completion_text(p),
                self.prompt_column: completion_text(p),
                self.response_column: completion_text(c),
            }
            for p, c in zip(prompts, completions, strict=True)
        ]
        return [j.score for j in run_sync(self.judge_rows(rows))]


def _rank(values: list[float], k: int) -> str:
    if len(values) == 1:
        return "only"
    if values[k] == max(values) and values.count(values[k]) == 1:
        return "best"
    if values[k] == min(values) and values.count(values[k]) == 1:
        return "worst"
    return "middle"
