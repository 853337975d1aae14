"""PairwiseJudge: which of two responses is better, asked in both orders to cancel the
judge's position bias; orders that disagree make a tie."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from assay.curate.registry import register
from assay.curate.stage import Outcome, split_by_mask
from assay.judges.llm_judge import Call, Judgement, LLMJudge


class PairwiseAnswer(BaseModel):
    rationale: str = Field(description="brief comparison")
    winner: Literal["A", "B", "tie"]


@register
class PairwiseJudge(LLMJudge):
    """Compare response a with response b; both orders are asked (a first, then b first).

    Agreeing orders give the winner; disagreeing orders (or a tie in either) give "tie".
    The winner's text goes to `chosen_column` and the loser's to `rejected_column`, so the
    output is a DPO `prompt` / `chosen` / `rejected` dataset as it is (null for ties).

    Input columns: `prompt_column`, `a_column`, `b_column`.
    Output columns (output_column="judge"): `judge_score` (1.0 a wins, 0.0 b wins, 0.5 tie),
    `judge_verdict` ("a" / "b" / "tie"), `judge_rationale` (both orders' rationales),
    `judge_consistent` (bool: the orders agreed), `chosen`, `rejected`, `judge_error`,
    `judge_cost`.
    Rejects (when `drop_ties`): "tie: ..." ; `threshold` filters on the score as usual.
    As a reward: the completion is a, `reference_column` (e.g. a baseline answer) is b.

    Example: `PairwiseJudge(model="openai/gpt-4o-mini", a_column="answer_small",
    b_column="answer_large", drop_ties=True)`.
    """

    prompt_column: str = "prompt"
    a_column: str = "response_a"
    b_column: str = "response_b"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    criteria: str = "helpfulness, correctness and following the request"
    drop_ties: bool = False
    reference_column: str = "reference"

    def row_columns(self) -> list[str]:
        return [self.prompt_column, self.a_column, self.b_column]

    def extra_types(self) -> dict[str, pa.DataType]:
        return {"consistent": pa.bool_()}

    def _call(self, prompt: str, first: str, second: str) -> Call:
        text = (
            f"Compare two responses to the same request on {self.criteria}.\n\n"
            f"[Request]\n{prompt}\n\n[Response A]\n{first}\n\n[Response B]\n{second}\n\n"
            'Answer with JSON only: {"rationale": "...", "winner": "A" | "B" | "tie"}'
        )
        return Call([{"role": "user", "content": text}], PairwiseAnswer)

    def calls(self, row: dict[str, Any]) -> list[Call]:
        prompt, a, b = (str(row[c] or "") for c in self.row_columns())
        return [self._call(prompt, a, b), self._call(prompt, b, a)]

    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        first, second = answers  # type: ignore[misc]
        forward = {"A": "a", "B": "b", "tie": "tie"}[first.winner]  # type: ignore[attr-defined]
        swapped = {"A": "b", "B": "a", "tie": "tie"}[second.winner]  # type: ignore[attr-defined]
        consistent = forward == swapped
        verdict = forward if consistent else "tie"
        score = {"a": 1.0, "b": 0.0, "tie": 0.5}[verdict]
        rationale = f"a first: {first.rationale} | b first: {second.rationale}"  # type: ignore[attr-defined]
        return Judgement(score, verdict, rationale, extra={"consistent": consistent})

    def apply(self, table: pa.Table, judgements: list[Judgement]) -> pa.Table | Outcome:
        a, b = table[self.a_column].to_pylist(), table[self.b_column].to_pylist()
        chosen = [
            x if j.verdict == "a" else y if j.verdict == "b" else None
            for j, x, y in zip(judgements, a, b, strict=True)
        ]
        rejected = [
            y if j.verdict == "a" else x if j.verdict == "b" else None
            for j, x, y in zip(judgements, a, b, strict=True)
        ]
        for name, values in ((self.chosen_column, chosen), (self.rejected_column, rejected)):
            array = pa.array(values, pa.string())
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, array)
            else:
                table = table.append_column(name, array)
        out = super().apply(table, judgements)
        if not self.drop_ties:
            return out
        kept = out.kept if isinstance(out, Outcome) else out
        keep = [v != "tie" for v in kept[f"{self.output_column}_verdict"].to_pylist()]
        reasons = [
            "tie: the two orders disagreed" if not c else f"tie: {r[:200]}"
            for c, r in zip(
                kept[f"{self.output_column}_consistent"].to_pylist(),
                kept[f"{self.output_column}_rationale"].to_pylist(),
                strict=True,
            )
        ]
        split = split_by_mask(self.name, kept, pa.array(keep), pa.array(reasons, pa.string()))
        if not isinstance(out, Outcome):
            return split
        if not isinstance(split, Outcome):
            return out
        return Outcome(
            kept=split.kept,
            rejected=pa.concat_tables([out.rejected, split.rejected]),
            reasons=pa.concat_arrays([out.reason_array(), split.reason_array()]),
        )

    def reward_row(self, prompt: Any, completion: Any, columns: dict[str, Any]) -> dict[str, Any]:
        if self.reference_column not in columns:
            raise KeyError(
                f"PairwiseJudge.reward compares each completion with the dataset column "
                f"{self.reference_column!r}; got columns: {', '.join(columns) or 'none'}"
            )
        row = super().reward_row(prompt, completion, columns)
        row[self.prompt_column] = row["prompt"]
        row[self.a_column] = row["response"]
        row[self.b_column] = columns[self.reference_column]
        return row
