"""The verifier contract: one check per row, used as a stage and as a reward function.

A verifier is deterministic (no LLM): it compares a candidate (an answer, a SQL query, tool
calls) with the row's gold value and returns a `Verdict`. The base class turns verdicts into
columns, sends misses to the rejects when asked, and serves the same check to trainers as a
TRL-style reward function, so one object filters data and rewards a policy.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from assay.curate.stage import Outcome, Stage, split_by_mask


@dataclass(frozen=True)
class Verdict:
    """The result of one check: `correct`, a `score` in [0, 1] (1.0 for correct) and a reason
    a person can read ("wrong answer (got 12, gold 13)")."""

    correct: bool
    score: float
    reason: str


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or conversational messages (last assistant)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        for message in reversed(list(completion)):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                return str(message.get("content") or "")
    return str(completion)


class Verifier(Stage):
    """Base class of deterministic verifiers. Subclasses implement `check`.

    Input columns: `column` (the candidate), `gold_column` (the reference).
    Output columns: `output_column` (bool), `<output_column>_score` (float),
    `<output_column>_reason` (string).
    Rejects (when `drop_incorrect`): the verdict's reason.
    """

    column: str = "generation"
    gold_column: str = "answer"
    output_column: str = "correct"
    drop_incorrect: bool = True

    @abstractmethod
    def check(self, candidate: Any, gold: Any, row: dict[str, Any]) -> Verdict:
        """Compare one candidate with its gold value; `row` holds the row's other columns."""

    def extra_columns(self) -> list[str]:
        """Other columns `check` reads from `row` (checked to exist, passed in)."""
        return []

    def input_columns(self) -> list[str]:
        return [self.column, self.gold_column, *self.extra_columns()]

    def verdicts(self, table: pa.Table) -> list[Verdict]:
        rows = table.select(self.input_columns()).to_pylist()
        return [self.check(r[self.column], r[self.gold_column], r) for r in rows]

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        verdicts = self.verdicts(table)
        mask = pa.array([v.correct for v in verdicts], pa.bool_())
        columns = {
            self.output_column: mask,
            f"{self.output_column}_score": pa.array([v.score for v in verdicts], pa.float64()),
            f"{self.output_column}_reason": pa.array([v.reason for v in verdicts], pa.string()),
        }
        for name, values in columns.items():
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, values)
            else:
                table = table.append_column(name, values)
        if not self.drop_incorrect:
            return table
        reasons = pa.array([v.reason for v in verdicts], pa.string())
        return split_by_mask(self.name, table, mask, reasons)

    def reward(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float | None]:
        """TRL reward-function form: one score per completion, gold from `columns`.

        `columns` holds the dataset's columns (TRL passes every column but `prompt`); a row
        whose gold value is missing scores None (TRL skips it) rather than 0.
        """
        golds = columns.get(self.gold_column)
        if golds is None:
            raise KeyError(
                f"{self.name}.reward needs the dataset column {self.gold_column!r}; "
                f"got columns: {', '.join(columns) or 'none'}"
            )
        names = [c for c in self.extra_columns() if c in columns]
        scores: list[float | None] = []
        for i, completion in enumerate(completions):
            gold = golds[i]
            if gold is None:
                scores.append(None)
                continue
            row = {name: columns[name][i] for name in names}
            scores.append(self.check(completion_text(completion), gold, row).score)
        return scores
