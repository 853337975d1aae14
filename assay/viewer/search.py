"""The search index: a DuckDB copy of a dataset's scalar columns, for text search and pages.

A text search over Parquet reads every VARCHAR column of every row and runs one ILIKE per
column (0.6 s for 1M rows idle, 2.4 s on the loaded bench machine). The index holds:

    __assay_pos   BIGINT   the row's position in shard order (file offset + file_row_number)
    __assay_text  VARCHAR  lower(concat_ws(chr(31), <every VARCHAR column>)): the haystack
    <every column whose type is not a list, struct, map or blob>, as read from the shards

It comes from one of two places:
- written by the pipeline at the end of a run (`assay/curate/search_index.py`'s
  `write_index`, `<run>/search/output.duckdb`,
  table `rows` plus a `meta` row: the shards' names, sizes and mtimes, the union schema and
  the row count). The viewer attaches it read-only (`open_written`) only when the meta
  names exactly the shards it is reading now, with the same sizes and mtimes: a dataset
  changed after its index was written (a resumed run, a shard rewritten or added) never
  uses it, and falls back to the in-memory build below. It answers at once; after the
  first search it is copied into memory in the background (`load`), so later searches read
  memory (the first page never waits for, nor competes with, a build), and the file is
  then detached (its blocks leave DuckDB's buffer pool). Its columns are
  stored dictionary-compressed
  (`force_compression`): with DuckDB's default (FSST for strings) the file is 77 MB instead
  of ~250 MB for the bench's 1M rows, but every search decompresses the haystack, 1.3-1.6x
  slower than memory; stored this way a search over the file took as long as in memory.
- built by the viewer (`index_for`) in a background thread started after a dataset's first
  page, in a DuckDB database of its own (in memory, never in the workspace); a search made
  while it builds takes the Parquet path.

A search `q` is then `contains(__assay_text, lower(q))`. That selects the same rows as the
Parquet path's `c1 ilike '%q%' escape '\\' or c2 ilike ...` (ILIKE lowercases both sides
code point by code point and the pattern is a literal), except when `q` contains the
separator chr(31) or a non-ASCII character whose lowercase is ASCII (the Kelvin sign: DuckDB
compares all-ASCII columns with an ASCII-only lowering); `usable()` sends those to the
Parquet path. Filters and sorts on cached columns use the same SQL as the Parquet path.

Memory: an in-memory index is about twice the dataset's text (the columns and the haystack):
~330 MB for the 1M-row bench dataset; a written one is ~250 MB on disk, read through
DuckDB's buffer pool until a search copies it into memory. At most `MAX_INDEXES` indexes are kept
(least recently used dropped) and datasets over `MAX_ROWS` rows are not indexed (they search
the Parquet way).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import duckdb

from assay.curate.search_index import (  # noqa: F401 (index_path, write_index: re-exported)
    MAX_ROWS,
    POS,
    TEXT,
    VERSION,
    cached_type,
    create_sql,
    file_offsets,
    index_path,
    quote,
    shard_entries,
    write_index,
)

SEP = "\x1f"
MAX_INDEXES = 3
NICE_BUILD = 10  # added to the process's niceness for the viewer's background build

_DB: duckdb.DuckDBPyConnection | None = None
_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()  # one build at a time: two would fight over two cores
_INDEXES: OrderedDict[Any, SearchIndex] = OrderedDict()
_COUNTER = [0]
_RUNNING: set[duckdb.DuckDBPyConnection] = set()  # cursors of background builds and copies
_THREADS: list[threading.Thread] = []
_STOPPING = threading.Event()


def cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on the index database (its own in-memory DuckDB; spills to a temp folder)."""
    global _DB
    with _LOCK:
        if _DB is None:
            spill = os.path.join(tempfile.gettempdir(), f"assay-viewer-{os.getpid()}")
            _DB = duckdb.connect(config={"threads": 2, "temp_directory": spill})
            _DB.execute("set parquet_metadata_cache = true")
        return _DB.cursor()


def _start(target: Any, name: str) -> None:
    thread = threading.Thread(target=target, name=name, daemon=True)
    with _LOCK:
        _THREADS[:] = [t for t in _THREADS if t.is_alive()] + [thread]
    thread.start()


@contextlib.contextmanager
def _background_cursor() -> Any:
    """A cursor for a background build or copy, interrupted if the process exits."""
    if _STOPPING.is_set():
        raise duckdb.InterruptException("the process is exiting")
    with cursor() as con:
        with _LOCK:
            _RUNNING.add(con)
        try:
            yield con
        finally:
            with _LOCK:
                _RUNNING.discard(con)


@atexit.register
def _stop_background() -> None:
    """A DuckDB query still running in a daemon thread when the interpreter exits aborts the
    process ("terminate called ..."): interrupt the background ones and wait for them."""
    _STOPPING.set()
    with _LOCK:
        running, threads = list(_RUNNING), list(_THREADS)
    for con in running:
        with contextlib.suppress(duckdb.Error):
            con.interrupt()
    for thread in threads:
        thread.join(timeout=10)


class SearchIndex:
    """One dataset's index; `ready` is set when the build has finished (or failed).

    `table` is the (possibly qualified) table name to query; `written` is the attached
    database's alias for an index the pipeline wrote, None for one built in memory.
    """

    def __init__(self, files: list[str], schema: dict[str, str], rows: int) -> None:
        _COUNTER[0] += 1
        self.name = f"search_{_COUNTER[0]}"
        self.table = self.name
        self.written: str | None = None
        self.files = files
        self.schema = schema
        self.rows = rows
        self.columns = {c for c, t in schema.items() if cached_type(t)}
        self.text = [c for c, t in schema.items() if t == "VARCHAR"]
        self.ready = threading.Event()
        self.loaded = threading.Event()  # a written index copied into memory (or given up)
        self.loading = False
        self.error: BaseException | None = None
        self.dropped = False

    def _nice(self) -> None:
        # a build runs behind the pages: let them have the CPU first (relative to the
        # process's own niceness: setting 10 on a process at 12 would raise it)
        with contextlib.suppress(AttributeError, OSError):
            tid = threading.get_native_id()
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + NICE_BUILD))

    def load(self) -> None:
        """Copy a written index into memory in the background, once: called after a search
        (a search over the file takes 1.0-1.7x as long as over memory, a deep page most);
        pages read the file until the copy is done, then the file is detached."""
        with _LOCK:
            if self.written is None or self.loading or self.dropped:
                return
            self.loading = True
        _start(self._load, f"assay-load-{self.name}")

    def _load(self) -> None:
        try:
            with _BUILD_LOCK:
                if self.dropped:
                    return
                self._nice()
                with _background_cursor() as con:
                    con.execute("set threads = 1")  # this niced thread only
                    try:
                        con.execute(f"create table {self.name} as select * from {self.table}")
                    finally:
                        con.execute("set threads = 2")
                    if self.dropped:
                        con.execute(f"drop table if exists {self.name}")
                    else:
                        self.table = self.name  # pages from now on read memory
                    # the file's blocks leave DuckDB's buffer pool: the process does not
                    # hold the index twice (a page still reading the file fails over to
                    # the Parquet path; a newer file is attached under another alias)
                    con.execute(f"detach database if exists {self.written}")
        except duckdb.Error:  # the file stays in use
            pass
        finally:
            self.loaded.set()

    def build(self) -> None:
        try:
            with _BUILD_LOCK:
                if self.dropped:
                    return
                self._nice()
                with _background_cursor() as con:
                    # one thread (this niced one) builds: pages keep the other core
                    con.execute("set threads = 1")
                    offsets = file_offsets(con, self.files)
                    con.execute(
                        create_sql(self.name, self.schema),
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
            # a page reading it meanwhile fails over to the Parquet path
            with contextlib.suppress(duckdb.Error), cursor() as con:
                con.execute(f"drop table if exists {self.name}")
                if self.written:
                    con.execute(f"detach database if exists {self.written}")


def open_written(
    key: Any, files: list[str], path: str | Path, shards: list[list[Any]] | None = None
) -> SearchIndex | None:
    """The index the pipeline wrote at `path`, attached read-only, if it indexes exactly
    `files` with the `shards` entries ([name, size, mtime_ns] each, as `key` saw them;
    default: as they are now). The meta is read from the attached file itself, so a file
    replaced meanwhile is checked as what is attached. None when there is no such file or
    it indexes anything else; kept under `key` like a built one."""
    path = Path(path)
    with _LOCK:
        found = _INDEXES.get(key)
        if found is not None:
            _INDEXES.move_to_end(key)
            return found
    if not files or not path.is_file():
        return None
    with _LOCK:
        _COUNTER[0] += 1
        alias = f"written_{_COUNTER[0]}"
    literal = "'" + str(path).replace("'", "''") + "'"
    try:
        with cursor() as con:
            con.execute(f"attach {literal} as {alias} (read_only)")
            try:
                meta = con.execute(
                    f"select version, shards, schema, rows from {alias}.meta"
                ).fetchone()
                ok = (
                    meta is not None
                    and meta[0] == VERSION
                    and json.loads(meta[1]) == (shards or shard_entries(files))
                )
            except duckdb.Error:
                ok = False
            if not ok:
                con.execute(f"detach database if exists {alias}")
                return None
    except (duckdb.Error, OSError):  # unreadable, or another process writes it
        return None
    index = SearchIndex(files, {c: t for c, t in json.loads(meta[2])}, int(meta[3]))
    index.written, index.table = alias, f"{alias}.rows"
    index.ready.set()
    return _keep(key, index, detach_if_taken=True)


def _keep(key: Any, index: SearchIndex, detach_if_taken: bool = False) -> SearchIndex:
    with _LOCK:
        found = _INDEXES.get(key)
        if found is not None:  # another page got there first: use theirs
            _INDEXES.move_to_end(key)
            extra: list[SearchIndex] = [index] if detach_if_taken else []
            kept = found
        else:
            _INDEXES[key] = index
            extra = []
            while len(_INDEXES) > MAX_INDEXES:
                extra.append(_INDEXES.popitem(last=False)[1])
            kept = index
    for old in extra:
        old.drop()
    return kept


def lookup(key: Any) -> SearchIndex | None:
    """The index kept under `key` (building or ready), or None; starts nothing."""
    with _LOCK:
        found = _INDEXES.get(key)
        if found is not None:
            _INDEXES.move_to_end(key)
        return found


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
    kept = _keep(key, index)
    if kept is index:
        _start(index.build, f"assay-{index.name}")
    return kept


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
