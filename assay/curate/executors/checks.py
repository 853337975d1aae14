"""Checks on what a stage returns and on what a resume reads, so no row is lost silently.

- `check_result`: a stage's output keeps the table contract (every input row kept or
  rejected exactly once, or, for a stage that creates rows, the parent of a new row; such
  a stage may also reject rows it created, whose `parent_id` is in its input).
- `fingerprint` / `check_unchanged`: a committed batch's input, compared on resume.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from assay.curate.errors import AssayError, StageError
from assay.curate.stage import ID, PARENT_ID, Outcome, Stage
from assay.curate.store import BatchFingerprint


def fingerprint(table: pa.Table) -> BatchFingerprint:
    ids = table[ID]
    if not len(ids):
        return BatchFingerprint(0, None, None, None)
    try:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        checksum = str(frame.hash_rows(seed=0).sum())
    except (pl.exceptions.PolarsError, TypeError, ValueError):  # a type polars cannot hash
        checksum = None
    return BatchFingerprint(table.num_rows, ids[0].as_py(), ids[-1].as_py(), checksum)


def check_unchanged(b: int, table: pa.Table, committed: BatchFingerprint) -> None:
    now = fingerprint(table)
    if now != committed:
        raise AssayError(
            f"cannot resume: the source changed since the run started (batch {b}, ids "
            f"{committed.first_id}..{committed.last_id}, {committed.rows_in} rows, is now ids "
            f"{now.first_id}..{now.last_id}, {now.rows_in} rows, with content checksum "
            f"{'equal' if now.checksum == committed.checksum else 'different'}); "
            "start a new run"
        )


def check_result(
    stage: Stage, table: pa.Table, result: object, b: int
) -> tuple[pa.Table, pa.Table | None, pa.Table | None]:
    """Validate a stage's result; return (kept, rejected with `_reason`, new lineage)."""
    partition_of: pa.Table | None = None  # a table whose ids are the input's, partitioned
    if isinstance(result, Outcome):
        kept, rejected = result.kept, result.rejected
        reasons = result.reason_array()
        if len(reasons) != rejected.num_rows:
            raise StageError(
                stage.name,
                f"batch {b}: {len(reasons)} reasons for {rejected.num_rows} rejected rows",
            )
        partition_of = result.is_split_of()
    elif isinstance(result, pa.Table):
        kept, rejected, reasons = result, None, None
        partition_of = kept
    else:
        raise StageError(
            stage.name,
            f"batch {b}: returned a {type(result).__name__}, "
            "expected a pyarrow.Table or an Outcome",
        )
    for part, what in ((kept, "output"), (rejected, "rejected rows")):
        if part is not None and ID not in part.column_names:
            raise StageError(stage.name, f"batch {b}: its {what} lost the {ID!r} column", column=ID)
    in_ids = table[ID]
    if (
        not stage.creates_rows
        and partition_of is not None
        and ID in partition_of.column_names
        and same_values(partition_of[ID], in_ids)
    ):
        # kept (and rejected) are the input's own rows, split by a mask: every input row is
        # accounted for exactly once without comparing ids
        return kept, _with_reasons(rejected, reasons), None
    rejected_ids = rejected[ID] if rejected is not None else pa.chunked_array([], pa.string())
    if stage.creates_rows and rejected is not None:
        # a creating stage may reject rows it made itself (a sample whose request failed):
        # such a row's parent is in the input, and the parent counts as accounted for
        rejected_ids = _rejected_accounts(stage, b, rejected, in_ids)
    _require_known(stage, b, rejected_ids, in_ids, "rejected a row whose id is not in its input")
    created = None
    if stage.creates_rows:
        if PARENT_ID not in kept.column_names:
            raise StageError(
                stage.name,
                f"batch {b}: a stage that creates rows must give each a {PARENT_ID!r} column",
                column=PARENT_ID,
            )
        parents = kept[PARENT_ID]
        _require_known(stage, b, parents, in_ids, f"gave a {PARENT_ID} that is not in its input")
        own_parent = pc.fill_null(pc.equal(kept[ID], parents), False)
        if pc.any(own_parent).as_py():
            raise StageError(
                stage.name,
                f"batch {b}: a created row needs an id of its own, not its {PARENT_ID}'s",
                row_id=kept[ID].filter(own_parent)[0].as_py(),
            )
        accounted = pa.chunked_array(parents.chunks + rejected_ids.chunks, pa.string())
        _require_all_accounted(
            stage,
            b,
            in_ids,
            accounted,
            "neither the parent of a new row nor rejected; rows must never be dropped silently",
        )
        created = kept.select([ID, PARENT_ID])
    else:
        out_ids = pa.chunked_array(kept[ID].chunks + rejected_ids.chunks, pa.string())
        _require_known(
            stage,
            b,
            out_ids,
            in_ids,
            "returned a row whose id is not in its input (a stage that creates rows sets "
            "creates_rows = True)",
        )
        if len(out_ids) != table.num_rows or pc.count_distinct(out_ids).as_py() != len(out_ids):
            _require_all_accounted(
                stage,
                b,
                in_ids,
                out_ids,
                "neither kept nor rejected; rows must never be dropped silently",
            )
            raise StageError(
                stage.name,
                f"batch {b}: got {table.num_rows} rows but returned {kept.num_rows} kept + "
                f"{len(rejected_ids)} rejected; each row must be kept or rejected exactly once",
            )
    return kept, _with_reasons(rejected, reasons), created


def _with_reasons(rejected: pa.Table | None, reasons: pa.Array | None) -> pa.Table | None:
    if rejected is None:
        return None
    if "_reason" in rejected.column_names:
        rejected = rejected.drop_columns(["_reason"])
    return rejected.append_column("_reason", reasons)


def same_values(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Whether `a` and `b` are views of the same memory (so equal), checked without reading
    their values: same type, chunks, offsets, lengths and buffers. False says nothing."""
    if a.type != b.type or a.num_chunks != b.num_chunks or len(a) != len(b):
        return False
    for x, y in zip(a.chunks, b.chunks, strict=True):
        if x.offset != y.offset or len(x) != len(y):
            return False
        xb, yb = x.buffers(), y.buffers()
        if len(xb) != len(yb):
            return False
        for p, q in zip(xb, yb, strict=True):
            if p is None or q is None:
                if p is not q:
                    return False
            elif p.address != q.address or p.size != q.size:
                return False
    return True


def _rejected_accounts(
    stage: Stage, b: int, rejected: pa.Table, in_ids: pa.ChunkedArray
) -> pa.ChunkedArray:
    """The input id each rejected row accounts for: its own id, or for a row the stage
    created (its id is new), its `parent_id`."""
    ids = rejected[ID]
    new = pc.invert(pc.is_in(ids, value_set=in_ids))
    if not pc.any(new).as_py():
        return ids
    if PARENT_ID not in rejected.column_names:
        raise StageError(
            stage.name,
            f"batch {b}: rejected a row it created without a {PARENT_ID!r} column",
            column=PARENT_ID,
            row_id=ids.filter(new)[0].as_py(),
        )
    parents = rejected[PARENT_ID]
    accounts = pc.if_else(new, parents, ids)
    unknown = pc.invert(pc.fill_null(pc.is_in(accounts, value_set=in_ids), False))
    if pc.any(unknown).as_py():
        raise StageError(
            stage.name,
            f"batch {b}: rejected a new row whose {PARENT_ID} is not in its input",
            row_id=ids.filter(unknown)[0].as_py(),
        )
    return pa.chunked_array([accounts.combine_chunks()] if len(accounts) else [], pa.string())


def _require_known(
    stage: Stage, b: int, ids: pa.ChunkedArray, known: pa.ChunkedArray, problem: str
) -> None:
    unknown = pc.invert(pc.is_in(ids, value_set=known))
    if pc.any(unknown).as_py():
        raise StageError(stage.name, f"batch {b}: {problem}", row_id=ids.filter(unknown)[0].as_py())


def _require_all_accounted(
    stage: Stage, b: int, in_ids: pa.ChunkedArray, out_ids: pa.ChunkedArray, problem: str
) -> None:
    missing = pc.invert(pc.is_in(in_ids, value_set=out_ids))
    if pc.any(missing).as_py():
        raise StageError(
            stage.name,
            f"batch {b}: input row is {problem}",
            row_id=in_ids.filter(missing)[0].as_py(),
        )
