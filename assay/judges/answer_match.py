"""AnswerMatch: a verifier that executes nothing but compares an answer with the gold one."""

from __future__ import annotations

from typing import Literal

import polars as pl
import pyarrow as pa

from assay.curate.registry import register
from assay.curate.stage import Outcome, Stage, split_by_mask

_NUMBER = r"-?\d+(?:\.\d+)?"


@register
class AnswerMatch(Stage):
    """Mark whether a model's answer matches the gold answer; optionally drop the misses.

    Modes: `number` compares the last number in the answer with the gold number (so
    "The answer is 12." matches 12), `normalized` compares case-, space- and
    punctuation-insensitively, `exact` compares the strings as they are.

    Input columns: `column` (string), `gold_column` (string or number).
    Output columns: `output_column` (bool).
    Rejects (when `drop_incorrect`): "wrong answer (got X, gold Y)".

    Example: `AnswerMatch(column="generation", gold_column="answer")` keeps
    `{"generation": "3 + 4 = 7", "answer": 7}` and rejects `{"generation": "8", "answer": 7}`.
    """

    column: str = "answer"
    gold_column: str = "gold"
    output_column: str = "correct"
    mode: Literal["number", "normalized", "exact"] = "number"
    drop_incorrect: bool = True

    def input_columns(self) -> list[str]:
        return [self.column, self.gold_column]

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        frame = pl.from_arrow(table.select([self.column, self.gold_column]))
        assert isinstance(frame, pl.DataFrame)
        got, gold = pl.col(self.column).cast(pl.String), pl.col(self.gold_column).cast(pl.String)
        if self.mode == "number":
            got = got.str.extract_all(_NUMBER).list.last()
            same = got.cast(pl.Float64, strict=False) == gold.cast(pl.Float64, strict=False)
        elif self.mode == "normalized":
            same = _normalized(got) == _normalized(gold)
        else:
            same = got == gold
        result = frame.select(
            same.fill_null(False).alias("same"),
            pl.format(
                "wrong answer (got {}, gold {})", got.fill_null("none"), gold.fill_null("none")
            ).alias("reason"),
        )
        mask = result["same"].to_arrow()
        table = (
            table.append_column(self.output_column, mask)
            if self.output_column not in table.column_names
            else table.set_column(
                table.column_names.index(self.output_column), self.output_column, mask
            )
        )
        if not self.drop_incorrect:
            return table
        return split_by_mask(self.name, table, mask, result["reason"].to_arrow())


def _normalized(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.replace_all(r"[\p{P}\s]+", " ").str.strip_chars()
