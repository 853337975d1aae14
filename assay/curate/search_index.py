"""The viewer's search index of a finished run's output, written at the end of the run.

`Pipeline.run` calls `write_index` on the run's output shards once the run is done; the
viewer (`assay/viewer/search.py`, which reads it and documents the layout and the checks)
uses it only while the shards are exactly the ones it indexed. Here, in the engine, so the
engine never imports the viewer. A run passes the output tables it still holds
(`create_from_tables`, `search_haystack.py`): reading 1M rows of shards back and lowering
the haystack in DuckDB were ~0.3 and ~0.4 of the ~2.5 CPU-s the index cost on the engine
bench; fsyncing the ~250 MB file was ~0.9 s of its wall time.

    <run>/search/output.duckdb
      rows:  __assay_pos BIGINT, __assay_text VARCHAR, <every scalar column of the shards>
      meta:  version, shards (JSON [name, size, mtime_ns] each), schema (JSON), rows
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from assay.curate import search_haystack

POS = "__assay_pos"
TEXT = "__assay_text"
MAX_ROWS = 5_000_000
NESTED = ("[]", "STRUCT(", "MAP(", "UNION(", "BLOB")
VERSION = 1  # of the written index's layout; another version is not used


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def cached_type(dtype: str) -> bool:
    return not any(mark in dtype for mark in NESTED)


def index_path(run_dir: str | Path) -> Path:
    """Where the pipeline writes the index of a run's output shards."""
    return Path(run_dir) / "search" / "output.duckdb"


def shard_entries(files: list[str]) -> list[list[Any]]:
    """[name, size, mtime_ns] of each shard, in order: what a written index must match."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return out


def text_columns(schema: dict[str, str]) -> list[str]:
    """The columns the haystack joins: every VARCHAR column, in order."""
    return [c for c, t in schema.items() if t == "VARCHAR"]


def create_sql(table: str, schema: dict[str, str]) -> str:
    """CREATE TABLE `table` AS the index rows of read_parquet($files) ($offsets: file starts)."""
    text = ", ".join(quote(c) for c in text_columns(schema)) or "''"
    cols = ", ".join(quote(c) for c, t in schema.items() if cached_type(t))
    return (
        f"create table {table} as select "
        f"list_extract($offsets, file_index::integer + 1) + file_row_number "
        f"as {POS}, lower(concat_ws(chr(31), {text})) as {TEXT}{', ' if cols else ''}{cols} "
        "from read_parquet($files, union_by_name = true, file_row_number = true)"
    )


def create_from_tables(
    con: duckdb.DuckDBPyConnection,
    files: list[str],
    tables: dict[str, pa.Table],
    schema: dict[str, str],
) -> bool:
    """Create table `rows` (as `create_sql`) from the output tables a run held (by shard
    name; a shard not held is read), the haystack lowered in Arrow (`search_haystack`).
    False, creating nothing, when the shards' Arrow types cannot be unified (DuckDB's
    `union_by_name` can: the caller reads the shards with `create_sql` then)."""
    columns = [c for c, t in schema.items() if cached_type(t)]
    try:
        arrow = search_haystack.arrow_schema(files, tables, columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    batches = search_haystack.index_batches(files, tables, columns, text_columns(schema), arrow)
    reader = pa.RecordBatchReader.from_batches(search_haystack.batch_schema(arrow), batches)
    # each column cast to the type DuckDB reads from the shards: the viewer's Parquet path
    # and the index then compare and show the same values
    cols = "".join(f", cast({quote(c)} as {schema[c]}) as {quote(c)}" for c in columns)
    con.register("index_input", reader)
    try:
        con.execute(
            f"create table rows as select {search_haystack.POS} as {POS}, "
            f"{search_haystack.text_sql()} as {TEXT}{cols} from index_input"
        )
    finally:
        con.unregister("index_input")
    return True


def file_offsets(con: duckdb.DuckDBPyConnection, files: list[str]) -> list[int]:
    """The position of each file's first row in the concatenation of `files`."""
    rows = dict(
        con.execute(
            "select file_name, num_rows from parquet_file_metadata($files)", {"files": files}
        ).fetchall()
    )
    out, total = [], 0
    for f in files:
        out.append(total)
        total += int(rows.get(f, 0))
    return out


def write_index(
    files: list[str],
    path: str | Path,
    threads: int | None = None,
    tables: dict[str, pa.Table] | None = None,
) -> Path | None:
    """Write the index of `files` (Parquet shards, in order) to the DuckDB file `path`.

    Input: the shards (any columns); `tables`: the output tables the run still holds, by
    shard name (the rows of those shards, not read back; `create_from_tables`). Output:
    `path` with table `rows` (__assay_pos, __assay_text, every scalar column) and table
    `meta` (version, shards as JSON [name, size, mtime_ns], schema as JSON [column, type],
    rows). Written to a temporary file then renamed, so a reader sees the old index or the
    new one, never half of one; not fsynced (a cache: a file torn by a crash fails DuckDB's
    block checksums, and the viewer then reads the shards). Returns None (and writes
    nothing) for no shards, more than `MAX_ROWS` rows or reserved column names.
    """
    path = Path(path)
    if not files:
        return None
    before = shard_entries(files)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        con = duckdb.connect(str(tmp), config={"threads": threads or os.cpu_count() or 1})
        try:
            con.execute("set enable_progress_bar = false")  # a run prints its own progress
            con.execute("set fsync_mode = 'none'")  # see the docstring
            sql = "describe select * from read_parquet($files, union_by_name = true)"
            schema = {r[0]: r[1] for r in con.execute(sql, {"files": files}).fetchall()}
            offsets = file_offsets(con, files)
            rows = offsets[-1] + int(
                con.execute(
                    "select num_rows from parquet_file_metadata($f)", {"f": files[-1:]}
                ).fetchone()[0]
            )
            if rows > MAX_ROWS or POS in schema or TEXT in schema:
                return None
            con.execute("set force_compression = 'dictionary'")  # see the module docstring
            if tables is None or not create_from_tables(con, files, tables, schema):
                con.execute(create_sql("rows", schema), {"files": files, "offsets": offsets})
            con.execute(
                "create table meta as select $v::integer as version, $s::varchar as shards, "
                "$c::varchar as schema, $n::bigint as rows",
                {
                    "v": VERSION,
                    "s": json.dumps(before),
                    "c": json.dumps(list(schema.items())),
                    "n": rows,
                },
            )
        finally:
            con.close()
        if shard_entries(files) != before:  # a shard changed while it was read
            return None
        os.replace(tmp, path)
        return path
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        with contextlib.suppress(FileNotFoundError):
            tmp.with_name(tmp.name + ".wal").unlink()
