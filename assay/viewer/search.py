"""The search index: an in-memory DuckDB copy of a dataset's scalar columns, for text search.

A text search over Parquet reads every VARCHAR column of every row and runs one ILIKE per
column (0.6 s for 1M rows idle, 2.4 s on the loaded bench machine). The index is built once
per set of shards, in a background thread started by the dataset's first page, in a DuckDB
database of its own (in memory, never in the workspace); a search made while it builds
takes the Parquet path:

    __assay_pos   BIGINT   the row's position in shard order (file offset + file_row_number)
    __assay_text  VARCHAR  lower(concat_ws(chr(31), <every VARCHAR column>)): the haystack
    <every column whose type is not a list, struct, map or blob>, as read from the shards

A search `q` is then `contains(__assay_text, lower(q))`. That selects the same rows as the
Parquet path's `c1 ilike '%q%' escape '\\' or c2 ilike ...` (ILIKE lowercases both sides
code point by code point and the pattern is a literal), except when `q` contains the
separator chr(31) or a non-ASCII character whose lowercase is ASCII (the Kelvin sign: DuckDB
compares all-ASCII columns with an ASCII-only lowering); `usable()` sends those to the
Parquet path. Filters and sorts on cached columns use the same SQL as the Parquet path.

Memory: about twice the dataset's text (the columns and the haystack): ~330 MB for the
1M-row bench dataset. At most `MAX_INDEXES` indexes are kept (least recently used dropped)
and datasets over `MAX_ROWS` rows are not indexed (they search the Parquet way).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections import OrderedDict
from typing import Any

import duckdb

POS = "__assay_pos"
TEXT = "__assay_text"
SEP = "\x1f"
MAX_INDEXES = 3
MAX_ROWS = 5_000_000
NESTED = ("[]", "STRUCT(", "MAP(", "UNION(", "BLOB")

_DB: duckdb.DuckDBPyConnection | None = None
_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()  # one build at a time: two would fight over two cores
_INDEXES: OrderedDict[Any, SearchIndex] = OrderedDict()
_COUNTER = [0]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on the index database (its own in-memory DuckDB; spills to a temp folder)."""
    global _DB
    with _LOCK:
        if _DB is None:
            spill = os.path.join(tempfile.gettempdir(), f"assay-viewer-{os.getpid()}")
            _DB = duckdb.connect(config={"threads": 2, "temp_directory": spill})
            _DB.execute("set parquet_metadata_cache = true")
        return _DB.cursor()


def cached_type(dtype: str) -> bool:
    return not any(mark in dtype for mark in NESTED)


class SearchIndex:
    """One dataset's index; `ready` is set when the build has finished (or failed)."""

    def __init__(self, files: list[str], schema: dict[str, str], rows: int) -> None:
        _COUNTER[0] += 1
        self.name = f"search_{_COUNTER[0]}"
        self.files = files
        self.schema = schema
        self.rows = rows
        self.columns = {c for c, t in schema.items() if cached_type(t)}
        self.text = [c for c, t in schema.items() if t == "VARCHAR"]
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.dropped = False

    def build(self) -> None:
        try:
            with _BUILD_LOCK:
                if self.dropped:
                    return
                # a build runs behind the pages: let them have the CPU first
                with contextlib.suppress(AttributeError, OSError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
                text = ", ".join(quote(c) for c in self.text) or "''"
                cols = ", ".join(quote(c) for c in self.schema if c in self.columns)
                with cursor() as con:
                    # one thread (this niced one) builds: pages keep the other core
                    con.execute("set threads = 1")
                    offsets = file_offsets(con, self.files)
                    con.execute(
                        f"create table {self.name} as select "
                        f"list_extract($offsets, file_index::integer + 1) + file_row_number "
                        f"as {POS}, lower(concat_ws(chr(31), {text})) as {TEXT}, {cols} "
                        "from read_parquet($files, union_by_name = true, file_row_number = true)",
                        {"files": self.files, "offsets": offsets},
                    )
                    con.execute("set threads = 2")
                    if self.dropped:
                        con.execute(f"drop table if exists {self.name}")
        except BaseException as exc:  # a failed build means the Parquet path, not an error
            self.error = exc
        finally:
            self.ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.ready.wait(timeout) and self.error is None and not self.dropped

    def drop(self) -> None:
        self.dropped = True
        if self.ready.is_set() and self.error is None:
            with cursor() as con:
                con.execute(f"drop table if exists {self.name}")


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


def index_for(
    key: Any, files: list[str], schema: dict[str, str], rows: int, start: bool = True
) -> SearchIndex | None:
    """The index of these shards, its build started in the background if it has none yet."""
    if rows > MAX_ROWS or POS in schema or TEXT in schema:
        return None
    with _LOCK:
        found = _INDEXES.get(key)
        if found is not None:
            _INDEXES.move_to_end(key)
            return found
        if not start:
            return None
        index = SearchIndex(files, schema, rows)
        _INDEXES[key] = index
        evicted = []
        while len(_INDEXES) > MAX_INDEXES:
            evicted.append(_INDEXES.popitem(last=False)[1])
    for old in evicted:
        old.drop()
    threading.Thread(target=index.build, name=f"assay-{index.name}", daemon=True).start()
    return index


def usable(query: str) -> str | None:
    """`lower(query)` as DuckDB lowers it, or None when the index could answer differently."""
    if SEP in query:
        return None
    with cursor() as con:
        lowered = con.execute("select lower($q)", {"q": query}).fetchone()[0]
        odd = [ch for ch in query if not ch.isascii()]
        if odd:
            lows = con.execute(
                "select list_transform($c::varchar[], lambda x: lower(x))", {"c": odd}
            ).fetchone()[0]
            if any(low.isascii() for low in lows):
                return None
    return lowered
