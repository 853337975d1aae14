"""The LLM-judge base: prompts -> structured verdicts -> score / verdict / rationale columns.

A judge builds one or more chat requests per row (`calls`), each asking for JSON that follows
a schema (sent as `response_format`, so local models decode under the grammar and hosted ones
use structured output), and turns the parsed answers into a `Judgement` (`judge_row`).
A verdict that is not valid JSON for the schema, or a refusal, leaves the row unscored
(score null, verdict "error", the problem in `<out>_error`): it is never read as a pass.

Columns (with `output_column="judge"`): `judge_score` (float in [0, 1], null when unscored),
`judge_verdict` (string), `judge_rationale` (string), `judge_error` (string or null),
`judge_cost` (float), plus each judge's own columns.
As a filter (`threshold` set) rows scoring below it go to the rejects with the verdict and
rationale as the reason; unscored rows are rejected too (`keep_unscored=True` keeps them).
As a reward function `judge.reward(prompts, completions, **columns)` returns the scores
(None where unscored), running its own event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from assay.curate.llm.stage_client import UsesLLM
from assay.curate.llm.types import ChatRequest, ChatResponse
from assay.curate.stage import AsyncStage, Outcome, split_by_mask
from assay.judges.base import completion_text
from assay.operators.jsontext import extract_json


@dataclass
class Call:
    """One request a judge makes for a row: chat messages and the answer's pydantic model."""

    messages: list[dict[str, Any]]
    answer: type[BaseModel]


@dataclass
class Judgement:
    """A judge's result for one row. `extra` holds the judge's own columns."""

    score: float | None
    verdict: str
    rationale: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cost: float = 0.0


class VerdictError(ValueError):
    """A judge answer that cannot be used (malformed, off-schema, a refusal)."""


def parse_answer(response: ChatResponse, answer: type[BaseModel]) -> BaseModel:
    """The validated answer, or VerdictError saying why not."""
    if response.error is not None:
        raise VerdictError(f"request failed: {response.error}")
    text = response.text
    if text is None or not text.strip():
        raise VerdictError("empty answer (a refusal?)")
    try:
        value = extract_json(text)
    except ValueError as exc:
        raise VerdictError(f"no usable JSON ({exc}): {text.strip()[:80]!r}") from None
    try:
        return answer.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        raise VerdictError(f"verdict off schema at {where}: {first['msg']}") from None


class LLMJudge(AsyncStage, UsesLLM):
    """Base class of LLM judges; subclasses implement `calls`, `judge_row`, `row_columns`."""

    output_column: str = "judge"
    threshold: float | None = None
    keep_unscored: bool = False
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = 0
    system_prompt: str | None = None
    structured: bool = True

    # --- what a judge defines ------------------------------------------------------------

    @abstractmethod
    def row_columns(self) -> list[str]:
        """Columns the judge reads from each row."""

    @abstractmethod
    def calls(self, row: dict[str, Any]) -> list[Call]:
        """The requests to make for one row."""

    @abstractmethod
    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        """The judgement from the validated answers (one per call, in order)."""

    def extra_types(self) -> dict[str, pa.DataType]:
        """The Arrow types of the judge's own columns (default: strings)."""
        return {}

    def reward_row(self, prompt: Any, completion: Any, columns: dict[str, Any]) -> dict[str, Any]:
        """A row for `judge_row` from a TRL reward call (override when columns differ)."""
        return {
            **columns,
            "prompt": completion_text(prompt),
            "response": completion_text(completion),
        }

    # --- machinery ---------------------------------------------------------------------

    def input_columns(self) -> list[str]:
        return self.row_columns()

    def request(self, call: Call, sample_index: int = 0) -> ChatRequest:
        messages = list(call.messages)
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.seed is not None:
            params["seed"] = self.seed
        schema = call.answer.model_json_schema() if self.structured else None
        return ChatRequest(
            model=self.model,
            messages=tuple(messages),
            params=params,
            response_format=schema,
            sample_index=sample_index,
        )

    async def judge_rows(
        self, rows: list[dict[str, Any]], sample_index: int = 0
    ) -> list[Judgement]:
        """One judgement per row (sample `sample_index` of the judge, for ensembles)."""
        plans = [self.calls(row) for row in rows]
        requests = [self.request(c, sample_index) for plan in plans for c in plan]
        responses = await self.client.complete_many(requests)
        out, k = [], 0
        for row, plan in zip(rows, plans, strict=True):
            got = responses[k : k + len(plan)]
            k += len(plan)
            cost = sum(r.cost for r in got)
            try:
                answers = [parse_answer(r, c.answer) for r, c in zip(got, plan, strict=True)]
                judgement = self.judge_row(row, answers)
            except VerdictError as exc:
                judgement = Judgement(None, "error", "", error=str(exc))
            judgement.cost = cost
            out.append(judgement)
        return out

    async def aprocess(self, table: pa.Table) -> pa.Table | Outcome:
        rows = table.select(self.row_columns()).to_pylist()
        return self.apply(table, await self.judge_rows(rows))

    def apply(self, table: pa.Table, judgements: list[Judgement]) -> pa.Table | Outcome:
        """Write the judgement columns and, as a filter, split off the rows below threshold."""
        return write_judgements(
            self.name,
            table,
            judgements,
            self.output_column,
            self.threshold,
            self.keep_unscored,
            self.extra_types(),
        )

    def reward(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        """TRL reward form: one score in [0, 1] per completion (None where unscored)."""
        rows = [
            self.reward_row(p, c, columns_at(columns, i, len(completions)))
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        return [j.score for j in run_sync(self.judge_rows(rows))]


def columns_at(columns: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """Row `i` of TRL's per-completion keyword columns; other keywords TRL passes (e.g.
    `trainer_state`) are not columns and are left out."""
    return {
        k: v[i]
        for k, v in columns.items()
        if isinstance(v, Sequence) and not isinstance(v, str) and len(v) == n
    }


def write_judgements(
    stage: str,
    table: pa.Table,
    judgements: list[Judgement],
    output_column: str,
    threshold: float | None,
    keep_unscored: bool = False,
    types: dict[str, pa.DataType] | None = None,
) -> pa.Table | Outcome:
    """The judgement columns added to `table`; with a threshold, an Outcome of the rows below."""
    o, types = output_column, types or {}
    columns: dict[str, pa.Array] = {
        f"{o}_score": pa.array([j.score for j in judgements], pa.float64()),
        f"{o}_verdict": pa.array([j.verdict for j in judgements], pa.string()),
        f"{o}_rationale": pa.array([j.rationale for j in judgements], pa.string()),
        f"{o}_error": pa.array([j.error for j in judgements], pa.string()),
        f"{o}_cost": pa.array([j.cost for j in judgements], pa.float64()),
    }
    names = sorted({k for j in judgements for k in j.extra}, key=_order(types))
    for name in names:
        values = [_cell(j.extra.get(name), types.get(name)) for j in judgements]
        columns[f"{o}_{name}"] = pa.array(values, types.get(name, pa.string()))
    for name, values in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, values)
        else:
            table = table.append_column(name, values)
    if threshold is None:
        return table
    keep = [
        (j.score is None and keep_unscored) or (j.score is not None and j.score >= threshold)
        for j in judgements
    ]
    reasons = [_reason(j, threshold) for j in judgements]
    return split_by_mask(stage, table, pa.array(keep), pa.array(reasons, pa.string()))


def run_sync(coroutine: Any) -> Any:
    """Run a coroutine to completion, also from inside a running event loop (a notebook, a
    trainer callback): then it runs on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _reason(j: Judgement, threshold: float) -> str:
    if j.score is None:
        return f"unscored by the judge: {j.error}"
    rationale = f": {j.rationale[:200]}" if j.rationale else ""
    return f"{j.verdict} (score {j.score:.2f} < {threshold:g}){rationale}"


def _cell(value: Any, kind: pa.DataType | None) -> Any:
    if kind is None and value is not None and not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return value


def _order(types: dict[str, pa.DataType]) -> Any:
    known = list(types)
    return lambda name: (known.index(name) if name in known else len(known), name)


def numbered(items: Sequence[str], label: str) -> str:
    return "\n".join(f"[{label} {i}] {text}" for i, text in enumerate(items))
