"""JudgeEnsemble: several judges, or several samples of one judge, aggregated into one score
with an agreement column."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import pyarrow as pa
from pydantic import field_validator

from assay.curate.registry import get_stage, register
from assay.curate.stage import AsyncStage, Outcome
from assay.judges.llm_judge import (
    Judgement,
    LLMJudge,
    columns_at,
    run_sync,
    write_judgements,
)

_TYPES = {"agreement": pa.float64(), "votes": pa.int64(), "scores": pa.list_(pa.float64())}


@register
class JudgeEnsemble(AsyncStage):
    """Run every judge in `judges` (each `samples` times) and aggregate.

    Each member's vote is "pass" when its score is at least `vote_threshold`, "fail" below;
    unscored members abstain. `aggregate="mean"`: the score is the mean of the members'
    scores; `aggregate="majority"`: the share of pass votes. The verdict is the majority vote
    (a tied vote is "tie"), agreement the share of voting members that cast it. With
    `samples > 1` the members are sampled at `sample_temperature` (sample k uses its own seed).

    Input columns: every member judge's input columns.
    Output columns (output_column="ensemble"): `ensemble_score`, `ensemble_verdict`,
    `ensemble_agreement` (float in [0, 1]), `ensemble_votes` (int: members that voted),
    `ensemble_scores` (list<double>: each member's score, null when unscored),
    `ensemble_rationale` (the members' rationales), `ensemble_cost`.
    Rejects (when `threshold` is set): "fail (score 0.33 < 0.5, agreement 0.67)".

    Example (a recipe):

        - JudgeEnsemble:
            samples: 3
            judges:
              - RubricJudge: {model: openai/gpt-4o-mini, rubric: helpfulness}
              - RubricJudge: {model: openai/claude-haiku, rubric: helpfulness}
    """

    judges: list[LLMJudge]
    samples: int = 1
    sample_temperature: float = 0.7
    aggregate: Literal["mean", "majority"] = "mean"
    vote_threshold: float = 0.5
    threshold: float | None = None
    output_column: str = "ensemble"

    @field_validator("judges", mode="before")
    @classmethod
    def _build(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("judges: give a non-empty list of judges")
        out = []
        for i, entry in enumerate(value):
            if isinstance(entry, dict) and len(entry) == 1:
                ((name, params),) = entry.items()
                stage = get_stage(name)
                if not issubclass(stage, LLMJudge):
                    raise ValueError(f"judges[{i}]: {name} is not an LLM judge")
                entry = stage(**(params or {}))
            out.append(entry)
        return out

    def model_post_init(self, context: Any) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")

    def input_columns(self) -> list[str]:
        seen: list[str] = []
        for judge in self.judges:
            seen += [c for c in judge.input_columns() if c not in seen]
        return seen

    def members(self) -> list[tuple[LLMJudge, int]]:
        out = []
        for judge in self.judges:
            sampled = judge
            if self.samples > 1:
                sampled = judge.model_copy(update={"temperature": self.sample_temperature})
                sampled._client = judge._client  # a test's or user's client carries over
            out += [(sampled, k) for k in range(self.samples)]
        return out

    async def judge_rows(self, rows: list[dict[str, Any]]) -> list[Judgement]:
        results = [await judge.judge_rows(rows, k) for judge, k in self.members()]
        return [self._combine([r[i] for r in results]) for i in range(len(rows))]

    def _combine(self, votes: list[Judgement]) -> Judgement:
        scores = [v.score for v in votes]
        cast = ["pass" if s >= self.vote_threshold else "fail" for s in scores if s is not None]
        cost = sum(v.cost for v in votes)
        rationale = " | ".join(v.rationale or (v.error or "") for v in votes)
        extra: dict[str, Any] = {"scores": scores, "votes": len(cast)}
        if not cast:
            errors = "; ".join(v.error or "" for v in votes)
            return Judgement(
                None,
                "error",
                rationale,
                f"no member scored: {errors}",
                {**extra, "agreement": None},
                cost,
            )
        tally = Counter(cast).most_common()
        verdict = tally[0][0] if len(tally) == 1 or tally[0][1] > tally[1][1] else "tie"
        agreement = tally[0][1] / len(cast)
        judged = [s for s in scores if s is not None]
        if self.aggregate == "mean":
            score = sum(judged) / len(judged)
        else:
            score = cast.count("pass") / len(cast)
        return Judgement(score, verdict, rationale, None, {**extra, "agreement": agreement}, cost)

    async def aprocess(self, table: pa.Table) -> pa.Table | Outcome:
        rows = table.select(self.input_columns()).to_pylist()
        return write_judgements(
            self.name,
            table,
            await self.judge_rows(rows),
            self.output_column,
            self.threshold,
            types=_TYPES,
        )

    def reward(self, prompts: Any, completions: Any, **columns: Any) -> list[float | None]:
        rows = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            values = columns_at(columns, i, len(completions))
            row: dict[str, Any] = {}
            for judge in self.judges:
                row.update(judge.reward_row(p, c, values))
            rows.append(row)
        return [j.score for j in run_sync(self.judge_rows(rows))]
