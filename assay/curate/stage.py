"""The one contract: a stage takes an Arrow table (a batch of rows) and returns one.

A stage never drops rows silently: rows it removes go back to the executor as an
`Outcome` (kept rows, rejected rows, one reason per rejected row) and end up in the run's
rejects. Every row carries a stable string `id` from the source to the final dataset.

Four base classes cover the kinds of work:

- `Map`: same rows in, same rows out, with columns added or changed.
- `Filter`: a boolean mask (one column operation); the base class splits kept and rejected.
- `AsyncStage`: `async aprocess` for stages that wait on I/O (LLM calls).
- `Stage` with `needs_fit = True`: sees its whole input once through `fit` (a re-iterable of
  batches, for global work such as deduplication) before it processes batch by batch.

Stages are pydantic models: their fields are their parameters, validated when a recipe
builds them, and `model_dump()` is what the run store records.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from assay.curate.arrays import from_numpy, repeat, scalar
from assay.curate.errors import MissingColumnError, StageError

ID = "id"
PARENT_ID = "parent_id"

BatchReader = Callable[[], Iterator[pa.Table]]
"""Calling it starts a fresh pass over a stage's whole input, batch by batch."""


@dataclass
class Outcome:
    """What a stage returns when it removes rows.

    `rejected` holds the removed rows (with their `id`), `reasons` one string per removed row
    (or a single string for all of them).
    """

    kept: pa.Table
    rejected: pa.Table
    reasons: pa.Array | str
    # set by `split_by_mask`: the table that `kept` and `rejected` partition (by construction,
    # so the executor need not compare ids; see executors/checks.py)
    split_of: pa.Table | None = field(default=None, repr=False, compare=False)
    _parts: tuple[pa.Table, pa.Table] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.split_of is not None:
            self._parts = (self.kept, self.rejected)

    def is_split_of(self) -> pa.Table | None:
        """The table this outcome partitions, when `split_by_mask` made it unchanged."""
        if self._parts is None or self._parts[0] is not self.kept:
            return None
        if self._parts[1] is not self.rejected:
            return None
        return self.split_of

    def reason_array(self) -> pa.Array:
        if isinstance(self.reasons, str):
            return repeat(self.reasons, self.rejected.num_rows)
        return self.reasons.cast(pa.string())


class Stage(BaseModel):
    """Base class of every stage. Subclasses implement `process` (or a narrower base).

    Class attributes a subclass may set:
    - `needs_fit`: the executor calls `fit(read_input)` with the stage's whole input first.
    - `fit_overlaps`: the executor may run that fit in a thread of its own while the previous
      segment still makes its input (the first pass over `read_input()` then yields batches
      as they are finished); only for a fit that shares no state with other stages and does
      not use the run store (no LLM requests).
    - `creates_rows`: the stage emits rows with new ids; each new row has a `parent_id`
      column naming the input row it came from (recorded as lineage).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    needs_fit: ClassVar[bool] = False
    fit_overlaps: ClassVar[bool] = False
    creates_rows: ClassVar[bool] = False
    is_async: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def input_columns(self) -> list[str]:
        """Columns the stage reads; checked before the first batch reaches it."""
        return []

    def fit(self, read_input: BatchReader) -> None:
        """Global pass over the whole input (only called when `needs_fit`)."""

    @abstractmethod
    def process(self, table: pa.Table) -> pa.Table | Outcome:
        """Turn a batch into the kept rows, or an Outcome with the rejected ones."""

    def check_columns(self, table: pa.Table) -> None:
        for column in self.input_columns():
            if column not in table.column_names:
                raise MissingColumnError(self.name, column, table.column_names)

    def describe(self) -> dict[str, Any]:
        """The stage's name and parameters, as recorded in the run store."""
        return {"stage": self.name, "params": self.model_dump(mode="json")}


class Map(Stage):
    """A stage that keeps every row and adds or changes columns.

    Subclasses implement `map(table) -> table` with the same rows in the same order.
    """

    @abstractmethod
    def map(self, table: pa.Table) -> pa.Table:
        """The same rows in the same order, with columns added or changed."""

    def process(self, table: pa.Table) -> pa.Table:
        out = self.map(table)
        if not isinstance(out, pa.Table) or out.num_rows != table.num_rows:
            got = out.num_rows if isinstance(out, pa.Table) else type(out).__name__
            raise StageError(
                self.name, f"a Map must return as many rows as it got ({table.num_rows}), got {got}"
            )
        return out


class Filter(Stage):
    """A stage that keeps rows where a boolean mask is true.

    Subclasses implement `keep(table)` returning a boolean array (null counts as drop), or a
    `(mask, reasons)` pair with one reason per row. The default reason is `reason` formatted
    with the stage's parameters.
    """

    reason: ClassVar[str] = ""

    @abstractmethod
    def keep(self, table: pa.Table) -> pa.Array | tuple[pa.Array, pa.Array]:
        """A boolean mask over the rows, or (mask, one reason per row)."""

    def reject_reason(self) -> str:
        template = self.reason or f"dropped by {self.name}"
        return template.format(**self.model_dump())

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        result = self.keep(table)
        reasons: pa.Array | str
        if isinstance(result, tuple):
            mask, reasons = result
        else:
            mask, reasons = result, self.reject_reason()
        return split_by_mask(self.name, table, mask, reasons)


class AsyncStage(Stage):
    """A stage that waits on I/O; the executor awaits `aprocess` and runs batches concurrently."""

    is_async: ClassVar[bool] = True

    @abstractmethod
    async def aprocess(self, table: pa.Table) -> pa.Table | Outcome:
        """Like `process`, awaited by the executor."""

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        raise StageError(self.name, "an AsyncStage runs through aprocess(); use an executor")


def split_by_mask(stage: str, table: pa.Table, mask: Any, reasons: Any) -> pa.Table | Outcome:
    """Split `table` by a boolean `mask` (null = drop) into kept rows and an Outcome.

    `reasons` is one string for all dropped rows or an array with one value per input row.
    """
    mask = _as_array(mask)
    if mask.null_count:
        mask = pc.fill_null(mask, scalar(False, pa.bool_()))
    if len(mask) != table.num_rows:
        raise StageError(stage, f"mask has {len(mask)} values for {table.num_rows} rows")
    drop = pc.invert(mask)
    if not pc.any(drop).as_py():
        return table
    if not isinstance(reasons, str):
        reasons = _as_array(reasons).filter(drop)
    return Outcome(
        kept=table.filter(mask), rejected=table.filter(drop), reasons=reasons, split_of=table
    )


def _as_array(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype == np.bool_:
        return from_numpy(values)  # no pandas import (see assay/curate/arrays.py)
    return pa.array(values)
