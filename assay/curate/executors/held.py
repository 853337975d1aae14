"""Holding a segment's output in memory for the next segment, within a byte budget.

The next segment reads a segment's output twice (its fit, then its batches); tables that
fit the budget are read from memory, the rest (and everything on resume) from the shards,
which are written either way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from assay.curate.sources import ParquetSource, parquet_batches

# A segment's output that the next segment reads is also kept in memory up to this many bytes
# (reading it back costs a Parquet decode per pass, and a fit stage makes two passes).
HOLD_BYTES = 1 << 30


def default_hold_bytes() -> int:
    """`HOLD_BYTES`, or a quarter of the machine's memory when that is less."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return HOLD_BYTES
    return min(HOLD_BYTES, memory // 4)


class HoldBudget:
    """Bytes of segment output held in memory, shared by the segments of a run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


class Hold:
    """Where a segment keeps the output tables the next segment will read (by shard name)."""

    def __init__(self, budget: HoldBudget, tables: dict[str, pa.Table]) -> None:
        self.budget = budget
        self.tables = tables
        self.lock = threading.Lock()

    def add(self, name: str, table: pa.Table) -> bool:
        """Hold `table` if it fits the budget; whether it does."""
        if not self.budget.take(table.get_total_buffer_size()):
            return False
        with self.lock:
            self.tables[name] = table
        return True


class HeldSource(ParquetSource):
    """A segment's output shards, read from memory where the segment held them.

    `held` maps a shard's file name to the table written to it (the same rows, so batches,
    fingerprints and results are those of reading the shards)."""

    def __init__(
        self,
        path: Path,
        rows: int | None,
        held: dict[str, pa.Table],
        budget: HoldBudget,
    ) -> None:
        super().__init__(path, rows=rows)
        self.held = held
        self.budget = budget

    def record_batches(self) -> Iterator[pa.RecordBatch | pa.Table]:
        for file in self.files():
            table = self.held.get(file.name) if file.parent == self.path else None
            if table is not None:
                yield table
            else:
                yield from parquet_batches(file)

    def release(self) -> None:
        """Drop the held tables (the next reads come from the shards)."""
        held = sum(t.get_total_buffer_size() for t in self.held.values())
        self.held.clear()
        self.budget.give(held)
