"""The search index's rows built in Arrow, from the output tables a run still holds.

`search_index.write_index` feeds these to DuckDB instead of reading the shards back with
`read_parquet` when the run kept its output tables in memory (`LocalExecutor.run`'s
`keep_output`): a shard not held (a resume, or over the hold budget) is read here.

The haystack is `lower(concat_ws(chr(31), <VARCHAR columns>))`, the same string the viewer's
in-memory build makes in SQL (`search_index.create_sql`). DuckDB's `lower` runs at ~0.25
GB/s; on an all-ASCII string it only maps A-Z to a-z, which `pyarrow.compute.ascii_lower`
does ~20x faster. So each batch carries the concatenation lowered that way and whether it
is all ASCII (`ASCII`), and DuckDB lowers only the rows that are not (`text_sql`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from assay.curate import arrays

POS = "__assay_pos"
HAY = "__assay_hay"  # the concatenation, ASCII letters lowered
ASCII = "__assay_ascii"  # whether HAY is all ASCII (then it is the haystack as it is)
SEP = "\x1f"


def text_sql() -> str:
    """The haystack from a batch's HAY and ASCII: DuckDB lowers the rows not all ASCII."""
    return f"case when {ASCII} then {HAY} else lower({HAY}) end"


def haystack(table: pa.Table, text: list[str]) -> tuple[pa.Array, pa.Array]:
    """(HAY, ASCII) of `table`: `text` (its VARCHAR columns, in order) joined by chr(31),
    NULLs skipped (as concat_ws), ASCII letters lowered; and whether each is all ASCII."""
    n = table.num_rows
    cols = [pc.cast(table[c], pa.string()) for c in text if c in table.column_names]
    if not cols:
        joined = arrays.repeat("", n)
    elif len(cols) == 1:
        joined = pc.coalesce(cols[0], arrays.scalar("", pa.string()))
    else:
        sep = arrays.scalar(SEP, pa.string())
        joined = pc.binary_join_element_wise(*cols, sep, null_handling="skip")
    joined = pa.chunked_array(joined) if isinstance(joined, pa.Array) else joined
    return pc.ascii_lower(joined), pc.string_is_ascii(joined)


def arrow_schema(files: list[str], tables: dict[str, pa.Table], columns: list[str]) -> pa.Schema:
    """The union of the shards' Arrow types of `columns` (a held table's, else the shard
    footer's), widened where shards differ; `pa.ArrowInvalid` where they cannot be."""
    schemas = []
    for f in files:
        held = tables.get(Path(f).name)
        schema = held.schema if held is not None else pq.ParquetFile(f).schema_arrow
        schemas.append(pa.schema([schema.field(c) for c in columns if c in schema.names]))
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    return pa.schema([unified.field(c) for c in columns])


def index_batches(
    files: list[str],
    tables: dict[str, pa.Table],
    columns: list[str],
    text: list[str],
    schema: pa.Schema,
) -> Iterator[pa.RecordBatch]:
    """The index rows of `files` in order: POS, HAY, ASCII and `columns` (as `schema`; a
    column a shard lacks is NULL). A shard's rows come from `tables` (by file name) when
    held there, else from the shard."""
    start = 0
    for f in files:
        table = tables.get(Path(f).name)
        if table is None:  # not pq.read_table: that imports pandas
            shard = pq.ParquetFile(f)
            table = shard.read(columns=[c for c in columns if c in shard.schema_arrow.names])
        n = table.num_rows
        hay, ascii_ = haystack(table, text)
        pos = arrays.from_numpy(np.arange(start, start + n, dtype=np.int64))
        cols = [pa.chunked_array([pos]), hay, ascii_]
        for field in schema:
            if field.name in table.column_names:
                cols.append(pc.cast(table[field.name], field.type))
            else:
                cols.append(pa.chunked_array([pa.nulls(n, field.type)], field.type))
        out = pa.Table.from_arrays(cols, schema=batch_schema(schema))
        start += n
        yield from out.to_batches()


def batch_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of `index_batches`' batches for columns `schema`."""
    head = [
        pa.field(POS, pa.int64()),
        pa.field(HAY, pa.string()),
        pa.field(ASCII, pa.bool_()),
    ]
    return pa.schema(head + list(schema))
