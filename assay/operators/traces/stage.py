"""ReasoningTraces: sample traces from a teacher, verify their answers, keep the correct ones."""

from __future__ import annotations

from typing import Any

import jinja2
import pyarrow as pa
from pydantic import PrivateAttr

from assay.curate.errors import StageError
from assay.curate.registry import get_stage, register
from assay.curate.stage import ID, PARENT_ID, Map, Outcome
from assay.judges.base import Verifier
from assay.models.budget import BudgetedResponse, BudgetForcing
from assay.operators.generate import Generate
from assay.operators.traces.select import KeepPolicy, select_traces
from assay.operators.traces.split import STEPS, StepUnit, segment_steps, split_trace

COT_SYSTEM_PROMPT = (
    "Solve the problem step by step. Write each step on its own line. "
    "End with a last line 'Final answer: <answer>'."
)


@register
class ReasoningTraces(Generate):
    """Rejection sampling of reasoning traces: `n` samples per problem, verified, curated.

    For each problem row the teacher (any `model` Generate takes, with its prompt options;
    default: the question under a chain-of-thought system prompt) answers `n` times. Each
    sample's reasoning is split from its final answer (the provider's `reasoning_content` or
    `<think>` blocks, else the text before "Final answer:" / "The answer is" / "####" /
    `\\boxed{}`), and the final answer is checked against `gold_column` by `verifier` (a
    registered Verifier, `AnswerVerifier` by default). Per problem, `pass_rate` is the share
    of its answered samples that verified (a difficulty column). Of the correct samples,
    `keep="shortest"` keeps the one with the shortest reasoning, `"all"` keeps every one, and
    `"distinct"` one per approach (near-duplicate reasoning, word-trigram Jaccard >=
    `distinct_threshold`, collapses to its shortest member). With `require_reasoning`
    (default) a correct sample without reasoning is not kept (it still counts as passing). `budget` turns on thinking
    budgets and s1 budget forcing (see assay/models/budget.py; local backend and vLLM).

    Input columns: `question_column`, `gold_column`, and whatever the prompt reads.
    Output columns (one row per kept trace): `id` ("<problem id>/s<k>"), `parent_id`,
    `sample_index`, `question`, `reasoning`, `final_answer`, `steps`
    (list<struct<step_id, text>>, step ids "<row id>#<k>"), `pass_rate`, `n_samples`,
    `n_correct`, `correct` (bool), `correct_score`, `correct_reason`, Generate's
    `generation*` columns and, with `budget`, `thinking_tokens`, `budget_waits`,
    `budget_forced`.
    Rejects: failed requests ("llm request failed: ..."), wrong answers (the verifier's
    reason, e.g. "wrong answer (got 8, gold 7)") unless `keep_incorrect`, and correct samples
    not selected ("longer than the shortest correct trace (<id>)", "near duplicate of <id>
    (jaccard 0.83)", "correct answer without reasoning"). Rejected samples carry every column, so preference pairs can be
    built from them (assay/datasets/export.py).

    Example:

        ReasoningTraces(model="local/smollm2-135m", n=8, temperature=0.8, max_tokens=160,
                        gold_column="answer", keep="shortest")
        # {"id": "add-3", "question": "What is 4+9?", "answer": 13}
        # -> {"id": "add-3/s5", "reasoning": "4 plus 9 is 13.", "final_answer": "13",
        #     "pass_rate": 0.25, "steps": [{"step_id": "add-3/s5#0", ...}], ...}
    """

    system_prompt: str | None = COT_SYSTEM_PROMPT
    output_column: str = "generation"
    question_column: str = "question"
    gold_column: str = "answer"
    verifier: str = "AnswerVerifier"
    verifier_params: dict[str, Any] = {}
    keep: KeepPolicy = "shortest"
    keep_incorrect: bool = False
    require_reasoning: bool = True
    distinct_threshold: float = 0.7
    step_unit: StepUnit = "line"
    budget: BudgetForcing | None = None

    _verifier: Verifier | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if self.prompt is None and self.prompt_fn is None and not self.messages_column:
            self.prompt = "{{ " + self.question_column + " }}"
        super().model_post_init(context)
        try:
            cls = get_stage(self.verifier)
        except KeyError:
            raise ValueError(f"unknown verifier {self.verifier!r}") from None
        if not (isinstance(cls, type) and issubclass(cls, Verifier)):
            raise ValueError(f"{self.verifier!r} is not a Verifier (assay.judges.base)")
        params = {"drop_incorrect": False, **self.verifier_params}
        self._verifier = cls(**params)

    @property
    def creates_rows(self) -> bool:  # type: ignore[override]
        return True

    def input_columns(self) -> list[str]:
        extra = self._verifier.extra_columns() if self._verifier else []
        return sorted({*super().input_columns(), self.question_column, self.gold_column, *extra})

    async def aprocess(self, table: pa.Table) -> pa.Table | Outcome:
        try:
            requests = self.requests(table)
        except (jinja2.TemplateError, KeyError, ValueError, TypeError) as exc:
            raise StageError(
                self.name, f"cannot build prompts: {type(exc).__name__}: {exc}"
            ) from exc
        budgeted: list[BudgetedResponse] | None = None
        if self.budget is not None:
            budgeted = await self.budget.run(self.client, requests)
            responses = [b.response for b in budgeted]
        else:
            responses = await self.client.complete_many(requests)
        samples = self._with_outputs(table, requests, responses)
        if self.n == 1:
            samples = _as_samples(samples)
        if budgeted is not None:
            samples = _budget_columns(samples, budgeted)
        return self._verify_and_select(samples, [r.error for r in responses])

    def _verify_and_select(self, samples: pa.Table, errors: list[str | None]) -> pa.Table | Outcome:
        assert self._verifier is not None
        o = self.output_column
        rows = samples.to_pylist()
        split = [split_trace(r[o], r[f"{o}_reasoning"]) for r in rows]
        verdicts = [
            self._verifier.check(answer, row[self.gold_column], row) if err is None else None
            for (_, answer), row, err in zip(split, rows, errors, strict=True)
        ]
        answered: dict[str, int] = {}
        correct_of: dict[str, list[int]] = {}
        for i, (row, verdict) in enumerate(zip(rows, verdicts, strict=True)):
            problem = row[PARENT_ID]
            if verdict is not None:
                answered[problem] = answered.get(problem, 0) + 1
            if verdict is not None and verdict.correct:
                correct_of.setdefault(problem, []).append(i)
        ids = [r[ID] for r in rows]
        reasoning = [s[0] for s in split]
        correct_idx = [i for members in correct_of.values() for i in members]
        selectable = correct_of
        if self.require_reasoning:
            selectable = {p: [i for i in v if reasoning[i]] for p, v in correct_of.items()}
            selectable = {p: v for p, v in selectable.items() if v}
        drops = select_traces(
            selectable, reasoning, ids, self.keep, threshold=self.distinct_threshold
        )
        n_correct = {p: len(v) for p, v in correct_of.items()}
        pass_rate = [
            n_correct.get(r[PARENT_ID], 0) / answered[r[PARENT_ID]]
            if answered.get(r[PARENT_ID])
            else None
            for r in rows
        ]
        columns: dict[str, pa.Array] = {
            "question": pa.array([r[self.question_column] for r in rows], pa.string()),
            "reasoning": pa.array(reasoning, pa.string()),
            "final_answer": pa.array([s[1] for s in split], pa.string()),
            "steps": pa.array(
                [segment_steps(s[0], i, self.step_unit) for s, i in zip(split, ids, strict=True)],
                STEPS,
            ),
            "pass_rate": pa.array(pass_rate, pa.float64()),
            "n_samples": pa.array([answered.get(r[PARENT_ID], 0) for r in rows], pa.int32()),
            "n_correct": pa.array([n_correct.get(r[PARENT_ID], 0) for r in rows], pa.int32()),
            "correct": pa.array([bool(v and v.correct) for v in verdicts], pa.bool_()),
            "correct_score": pa.array([v.score if v else 0.0 for v in verdicts], pa.float64()),
            "correct_reason": pa.array([v.reason if v else None for v in verdicts], pa.string()),
        }
        for name, values in columns.items():
            samples = _set(samples, name, values)
        reasons: list[str | None] = [None] * len(rows)
        for i, (verdict, err) in enumerate(zip(verdicts, errors, strict=True)):
            if err is not None:
                reasons[i] = f"llm request failed: {err}"
            elif verdict is not None and not verdict.correct and not self.keep_incorrect:
                reasons[i] = verdict.reason
        for drop in drops:
            reasons[drop.index] = drop.reason
        if self.require_reasoning:  # a correct answer alone is not a reasoning trace
            for i in correct_idx:
                if not reasoning[i] and reasons[i] is None:
                    reasons[i] = "correct answer without reasoning"
        keep = pa.array([r is None for r in reasons], pa.bool_())
        if all(r is None for r in reasons):
            return samples
        rejected = pa.array([r for r in reasons if r is not None], pa.string())
        return Outcome(
            kept=samples.filter(keep),
            rejected=samples.filter(pa.array([r is not None for r in reasons])),
            reasons=rejected,
        )


@register
class SegmentSteps(Map):
    """Split a reasoning column into steps with stable ids (for step judges and feedback).

    Input columns: `column` (string). Output columns: `output_column`
    (list<struct<step_id, text>>, step ids "<row id>#<k>", k from 0).

    Example: `SegmentSteps(column="reasoning")` turns `{"id": "q1", "reasoning": "a.\\nb."}`
    into `steps = [{"step_id": "q1#0", "text": "a."}, {"step_id": "q1#1", "text": "b."}]`.
    """

    column: str = "reasoning"
    output_column: str = "steps"
    unit: StepUnit = "line"

    def input_columns(self) -> list[str]:
        return [self.column]

    def map(self, table: pa.Table) -> pa.Table:
        ids = table[ID].to_pylist()
        texts = table[self.column].to_pylist()
        steps = [segment_steps(t, i, self.unit) for t, i in zip(texts, ids, strict=True)]
        return _set(table, self.output_column, pa.array(steps, STEPS))


def _as_samples(table: pa.Table) -> pa.Table:
    """One sample per problem: ids become "<id>/s0" like n > 1 samples."""
    parents = table[ID].combine_chunks()
    table = _set(table, ID, pa.array([f"{p}/s0" for p in parents.to_pylist()], pa.string()))
    table = _set(table, PARENT_ID, parents)
    return _set(table, "sample_index", pa.array([0] * table.num_rows, pa.int32()))


def _budget_columns(table: pa.Table, budgeted: list[BudgetedResponse]) -> pa.Table:
    table = _set(
        table, "thinking_tokens", pa.array([b.thinking_tokens for b in budgeted], pa.int64())
    )
    table = _set(table, "budget_waits", pa.array([b.waits for b in budgeted], pa.int32()))
    return _set(table, "budget_forced", pa.array([b.forced for b in budgeted], pa.bool_()))


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
