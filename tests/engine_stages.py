"""Small stages used by the engine tests (importable by subprocesses, so not in conftest)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from assay.curate.stage import PARENT_ID, Filter, Map, Outcome, Stage


class Upper(Map):
    """Upper-case `text` into `upper`."""

    def input_columns(self) -> list[str]:
        return ["text"]

    def map(self, table: pa.Table) -> pa.Table:
        return table.append_column("upper", pc.utf8_upper(table["text"]))


class EvenOnly(Filter):
    """Keep rows whose integer `n` is even."""

    reason = "odd number"

    def keep(self, table: pa.Table) -> pa.Array:
        return pc.equal(pc.bit_wise_and(table["n"], 1), 0)


class Split(Stage):
    """Emit two rows per input row, with new ids and a parent_id."""

    creates_rows = True

    def process(self, table: pa.Table) -> pa.Table:
        ids = table["id"].to_pylist()
        return pa.table(
            {
                "id": [f"{i}/{k}" for i in ids for k in range(2)],
                PARENT_ID: [i for i in ids for _ in range(2)],
                "k": [k for _ in ids for k in range(2)],
            }
        )


class SlowLog(Map):
    """Sleep per batch and append each batch's first id to `log` (to count recomputation)."""

    log: str
    seconds: float = 0.05

    def map(self, table: pa.Table) -> pa.Table:
        time.sleep(self.seconds)
        with open(self.log, "a") as f:
            f.write(f"{table['id'][0].as_py()}\n")
            f.flush()
            os.fsync(f.fileno())
        return table


class FailOn(Map):
    """Raise when a row's id equals `bad_id`, unless the file `fixed` exists."""

    bad_id: str
    fixed: str = ""

    def map(self, table: pa.Table) -> pa.Table:
        if (
            not (self.fixed and Path(self.fixed).exists())
            and self.bad_id in table["id"].to_pylist()
        ):
            raise ValueError("boom")
        return table


class InterruptOn(FailOn):
    """As FailOn, but the user stops the run there (KeyboardInterrupt, as Ctrl-C raises)."""

    def map(self, table: pa.Table) -> pa.Table:
        try:
            return super().map(table)
        except ValueError:
            raise KeyboardInterrupt from None


class DropsSilently(Stage):
    """A broken stage: loses half its rows without rejecting them."""

    def process(self, table: pa.Table) -> pa.Table:
        return table.slice(0, table.num_rows // 2)


class ReturnsList(Stage):
    """A broken stage: returns a Python list."""

    def process(self, table: pa.Table):  # noqa: ANN201
        return table.to_pylist()


class InventsRows(Stage):
    """A broken stage: returns rows with ids not in its input."""

    def process(self, table: pa.Table) -> pa.Table:
        return table.set_column(0, "id", pa.array([f"new{i}" for i in range(table.num_rows)]))


class RejectAll(Stage):
    """Rejects every row with an Outcome."""

    def process(self, table: pa.Table) -> Outcome:
        return Outcome(kept=table.slice(0, 0), rejected=table, reasons="all gone")


class Duplicates(Stage):
    """A broken stage: repeats its first row in place of its last."""

    def process(self, table: pa.Table) -> pa.Table:
        return pa.concat_tables([table.slice(0, 1), table.slice(0, table.num_rows - 1)])


class HalfChildren(Stage):
    """A broken creating stage: makes children for the first half of its rows only."""

    creates_rows = True

    def process(self, table: pa.Table) -> pa.Table:
        ids = table["id"].to_pylist()[: table.num_rows // 2]
        return pa.table({"id": [f"{i}/c" for i in ids], PARENT_ID: ids})


class OwnParent(Stage):
    """A broken creating stage: gives rows their own id as parent_id."""

    creates_rows = True

    def process(self, table: pa.Table) -> pa.Table:
        return table.append_column(PARENT_ID, table["id"])


class RejectOddUntilFixed(Filter):
    """Rejects rows with an odd `n` until the file `fixed` exists."""

    fixed: str
    reason = "odd, not yet fixed"

    def keep(self, table: pa.Table) -> pa.Array:
        if Path(self.fixed).exists():
            return pa.array([True] * table.num_rows)
        return pc.equal(pc.bit_wise_and(table["n"], 1), 0)
