"""Dataset queries: search, filters, sort and pagination in DuckDB over a run's Parquet shards.

The browser gets one page of rows; everything else stays in DuckDB. Rows keep the shards'
order (DuckDB preserves insertion order for a scan with no ORDER BY), so page k is stable.
Totals are counted once per (shards, filter) and kept, so paging through a filtered set
costs one LIMIT/OFFSET scan per page. The dataset's search index (assay/viewer/search.py:
written by the pipeline at the end of a run, or built in the background after the first
page) answers, when it is ready and holds every column the page needs, a text search and
an unfiltered, unsorted page (a range of row positions; its schema and row count too, so
a cold first page reads no Parquet footer); the Parquet shards answer everything else. Both
give the same rows in the same order (`Page.via` says which answered). An indexed search
keeps the positions it matches, in page order (`search_positions.py`), so its next and
deep pages are a slice of them and a fetch of 50 rows, not a scan of the text and a top-N
each.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from assay.curate.search_index import quote
from assay.viewer import search as search_index
from assay.viewer import search_positions
from assay.viewer.lru import LRU
from assay.viewer.workspace import ViewerError

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
NUMERIC += ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
OPS = ("=", "!=", "<", "<=", ">", ">=", "contains", "not contains", "is null", "not null")
OPS += ("is true", "is false")
_NO_VALUE = {"is null", "not null", "is true", "is false"}


@dataclass(frozen=True)
class ColumnFilter:
    """`column op value`, e.g. ("judge_score", ">=", "0.5") or ("correct", "is false", "")."""

    column: str
    op: str
    value: str = ""


@dataclass
class Page:
    columns: list[str]
    rows: list[dict[str, Any]]
    total: int
    offset: int
    limit: int
    schema: dict[str, str] = field(default_factory=dict)
    via: str = "parquet"  # or "index": the search index answered

    @property
    def has_next(self) -> bool:
        return self.offset + self.limit < self.total


_SCHEMAS = LRU(64)
_DB: duckdb.DuckDBPyConnection | None = None
_DB_LOCK = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on one in-memory DuckDB per process: Parquet footers stay cached between
    pages (a fresh database costs ~30 ms and re-reads every footer)."""
    global _DB
    with _DB_LOCK:
        if _DB is None:
            _DB = duckdb.connect(config={"threads": 2})
            _DB.execute("set parquet_metadata_cache = true")
        return _DB.cursor()


def warm() -> None:
    """Open the process's DuckDB databases now (the first open costs ~50-200 ms), so the
    first page a person opens does not pay for it."""
    _cursor().close()
    search_index.cursor().close()


_TOTALS = LRU(512)


class ParquetTable:
    """The rows of one set of Parquet shards (a run's output, or one stage's rejects)."""

    def __init__(self, files: list[str], index_file: str | Path | None = None) -> None:
        """`files`: the shards, in order; `index_file`: where the pipeline may have written
        their index (`search.index_path(run_dir)`), used only if it indexes these shards."""
        self.files = files
        self.index_file = index_file
        # a shard rewritten (a resumed run) changes the key, so nothing stale is served
        stats = [os.stat(f) for f in files]
        self.key = tuple(
            (f, st.st_mtime_ns, st.st_size) for f, st in zip(files, stats, strict=True)
        )

    def index(self) -> search_index.SearchIndex | None:
        """This dataset's search index when it is ready to answer (starts no build)."""
        found = None
        if self.index_file is not None:
            # checked against the stats in the key: the index then holds what the key says
            shards = [[os.path.basename(f), size, mtime] for f, mtime, size in self.key]
            found = search_index.open_written(self.key, self.files, self.index_file, shards)
        else:
            found = search_index.lookup(self.key)
        if found is None or not found.ready.is_set() or not found.wait(0):
            return None
        return found

    def _connect(self) -> duckdb.DuckDBPyConnection:
        return _cursor()

    def _from(self) -> str:
        return "read_parquet($files, union_by_name = true)"

    def schema(self) -> dict[str, str]:
        if not self.files:
            return {}
        cached = _SCHEMAS.get(self.key)
        if cached is None and (index := self.index()) is not None:
            cached = dict(index.schema)  # the written index's meta: no footer read
            _SCHEMAS.put(self.key, cached)
        if cached is None:
            self.count()  # reads every footer at once into the metadata cache: describe
            # then reuses them (describing first reads them one by one: 2-3x slower)
            with self._connect() as con:
                rows = con.execute(
                    f"describe select * from {self._from()}", {"files": self.files}
                ).fetchall()
            cached = {r[0]: r[1] for r in rows}
            _SCHEMAS.put(self.key, cached)
        return dict(cached)

    def where(
        self, filters: list[ColumnFilter], search: str, schema: dict[str, str]
    ) -> tuple[str, dict[str, Any]]:
        """The WHERE clause (column names checked against the schema, values as parameters)."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for i, f in enumerate(filters):
            if f.column not in schema:
                raise ViewerError(
                    f"filter on unknown column {f.column!r} (columns: {', '.join(schema)})"
                )
            if f.op not in OPS:
                raise ViewerError(f"unknown filter operator {f.op!r} (use one of {', '.join(OPS)})")
            clauses.append(_clause(f, schema[f.column], f"v{i}", params))
        if search:
            text = [c for c, t in schema.items() if t == "VARCHAR"]
            if text:
                params["q"] = f"%{_escape_like(search)}%"
                clauses.append(
                    "(" + " or ".join(f"{quote(c)} ilike $q escape '\\'" for c in text) + ")"
                )
            else:
                clauses.append("false")
        return (" where " + " and ".join(clauses)) if clauses else "", params

    def count(self, where: str = "", params: dict[str, Any] | None = None) -> int:
        if not self.files:
            return 0
        key = (self.key, where, tuple(sorted((params or {}).items())))
        total = _TOTALS.get(key)
        if total is None and not where and (index := self.index()) is not None:
            total = index.rows
            _TOTALS.put(key, int(total))
        if total is None:
            with self._connect() as con:
                if where:
                    sql = f"select count(*) from {self._from()}{where}"
                    total = con.execute(sql, {"files": self.files, **(params or {})}).fetchone()[0]
                else:  # from the Parquet footers, no scan
                    total = con.execute(
                        "select coalesce(sum(num_rows), 0) from parquet_file_metadata($files)",
                        {"files": self.files},
                    ).fetchone()[0]
            _TOTALS.put(key, int(total))
        return int(total)

    def page(
        self,
        filters: list[ColumnFilter] | None = None,
        search: str = "",
        offset: int = 0,
        limit: int = 50,
        columns: list[str] | None = None,
        sort: str | None = None,
        descending: bool = False,
    ) -> Page:
        schema = self.schema()
        if not schema:
            return Page([], [], 0, 0, limit, {})
        where, params = self.where(filters or [], search, schema)
        cols = [c for c in (columns or list(schema)) if c in schema] or list(schema)
        order = ""
        if sort:
            if sort not in schema:
                raise ViewerError(f"cannot sort by unknown column {sort!r}")
            tie = ", id" if "id" in schema and sort != "id" else ""
            order = f" order by {quote(sort)} {'desc' if descending else 'asc'} nulls last{tie}"
        index = self.index()
        if index is not None:
            fast = None
            if search:
                fast = self._indexed_page(
                    index, filters or [], search, cols, sort, descending, offset, limit, where,
                    params,
                )  # fmt: skip
                if fast is not None:
                    index.load()  # a written index: into memory for the next searches
            elif not filters and not sort:
                fast = self._range_page(index, cols, offset, limit)
            if fast is not None:
                return fast
        total = self.count(where, params)
        offset = max(0, min(offset, max(total - 1, 0)))
        sql = (
            f"select {', '.join(quote(c) for c in cols)} from {self._from()}{where}{order} "
            f"limit {int(limit)} offset {int(offset)}"
        )
        with self._connect() as con:
            cur = con.execute(sql, {"files": self.files, **params})
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if index is None:  # started after this page, so the first page has the CPU
            self.start_index(schema)
        return Page(cols, rows, total, offset, limit, schema)

    def start_index(self, schema: dict[str, str]) -> None:
        """Start building this dataset's search index in the background (if none yet)."""
        search_index.index_for(self.key, self.files, schema, self.count())

    def _range_page(
        self, index: search_index.SearchIndex, cols: list[str], offset: int, limit: int
    ) -> Page | None:
        """An unfiltered, unsorted page: positions offset .. offset + limit - 1 of the index
        (positions are dense and in shard order, as the Parquet path's LIMIT/OFFSET)."""
        if not set(cols) <= index.columns:
            return None
        total = index.rows
        offset = max(0, min(offset, max(total - 1, 0)))
        pos = search_index.POS
        sql = (
            f"select {', '.join(quote(c) for c in cols)} from {index.table} "
            f"where {pos} >= $lo and {pos} < $hi order by {pos}"
        )
        try:
            with search_index.cursor() as con:
                cur = con.execute(sql, {"lo": offset, "hi": offset + int(limit)})
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        except duckdb.Error:  # dropped (evicted) meanwhile
            return None
        return Page(cols, rows, total, offset, limit, dict(index.schema), via="index")

    def _indexed_page(
        self,
        index: search_index.SearchIndex,
        filters: list[ColumnFilter],
        search: str,
        cols: list[str],
        sort: str | None,
        descending: bool,
        offset: int,
        limit: int,
        where: str,
        params: dict[str, Any],
    ) -> Page | None:
        """The page from the search index, or None where only the Parquet path can answer."""
        schema = index.schema
        needed = {f.column for f in filters} | set(cols) | ({sort, "id"} if sort else set())
        if not (needed & set(schema)) <= index.columns:
            return None
        lowered = search_index.usable(search)
        if lowered is None:
            return None
        clauses: list[str] = []
        fast: dict[str, Any] = {}
        for i, f in enumerate(filters):  # the Parquet path's clauses, on the same values
            clauses.append(_clause(f, schema[f.column], f"v{i}", fast))
        if index.text:
            fast["q"] = lowered
            clauses.append(f"contains({search_index.TEXT}, $q)")
        else:
            clauses.append("false")
        fast_where = " where " + " and ".join(clauses)
        order = f" order by {search_index.POS}"
        if sort:
            tie = ", id" if "id" in schema and sort != "id" else ""
            way = "desc" if descending else "asc"
            order = f" order by {quote(sort)} {way} nulls last{tie}, {search_index.POS}"
        # the same key as the Parquet path's count: either path fills it for the other
        key = (self.key, where, tuple(sorted(params.items())))
        pos = search_index.POS
        try:
            with search_index.cursor() as con:
                # a sorted first page: a top-N is cheaper than sorting every match
                compute = not sort or offset >= search_positions.DEEP
                search_key = (self.key, fast_where, order, search_positions.param_items(fast))
                found = search_positions.matches(con, index, search_key, compute)
                if found is None:  # a count, then a top-N of positions
                    total = _TOTALS.get(key)
                    if total is None:
                        sql = f"select count(*) from {index.table}{fast_where}"
                        total = int(con.execute(sql, fast).fetchone()[0])
                else:
                    total = len(found)
                _TOTALS.put(key, total)
                offset = max(0, min(offset, max(total - 1, 0)))
                if found is None:
                    cur = con.execute(
                        f"select {', '.join(quote(c) for c in cols)} from {index.table} "
                        f"where {pos} in (select {pos} from {index.table}{fast_where}{order} "
                        f"limit {int(limit)} offset {int(offset)}){order}",
                        fast,
                    )
                    names = [d[0] for d in cur.description]
                    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
                else:
                    rows = search_positions.rows_at(
                        con, index, cols, found[offset : offset + int(limit)]
                    )
        except duckdb.Error:  # dropped (evicted) meanwhile
            return None
        return Page(cols, rows, total, offset, limit, dict(schema), via="index")

    def row(self, row_id: str) -> dict[str, Any] | None:
        schema = self.schema()
        if "id" not in schema:
            return None
        with self._connect() as con:
            cur = con.execute(
                f"select * from {self._from()} where id = $id limit 1",
                {"files": self.files, "id": row_id},
            )
            names = [d[0] for d in cur.description]
            found = cur.fetchone()
        return dict(zip(names, found, strict=True)) if found else None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _clause(f: ColumnFilter, dtype: str, name: str, params: dict[str, Any]) -> str:
    col = quote(f.column)
    if f.op == "is null":
        return f"{col} is null"
    if f.op == "not null":
        return f"{col} is not null"
    if f.op in ("is true", "is false"):
        if dtype != "BOOLEAN":
            raise ViewerError(f"column {f.column!r} is {dtype}, not BOOLEAN: use = or contains")
        return f"{col} is {'true' if f.op == 'is true' else 'false'}"
    if f.op in ("contains", "not contains"):
        params[name] = f"%{_escape_like(f.value)}%"
        text = col if dtype == "VARCHAR" else f"cast({col} as varchar)"
        neg = "not " if f.op == "not contains" else ""
        return f"coalesce({text}, '') {neg}ilike ${name} escape '\\'"
    sql_op = "<>" if f.op == "!=" else f.op
    base = dtype.split("(")[0]
    if base in NUMERIC:
        try:
            params[name] = float(f.value)
        except ValueError:
            raise ViewerError(
                f"column {f.column!r} is {dtype}: {f.value!r} is not a number"
            ) from None
        return f"{col} {sql_op} ${name}"
    if base == "BOOLEAN":
        value = f.value.strip().lower()
        if value not in ("true", "false", "1", "0"):
            raise ViewerError(f"column {f.column!r} is BOOLEAN: compare with true or false")
        params[name] = value in ("true", "1")
        return f"{col} {sql_op} ${name}"
    if base in ("VARCHAR", "DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        params[name] = f.value
        return f"cast({col} as varchar) {sql_op} ${name}"
    raise ViewerError(f"column {f.column!r} is {dtype}: filter it with contains / is null")


def display(value: Any, limit: int = 160) -> str:
    """A cell as short text (lists and structs as compact JSON)."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
