"""SqlExecutionVerifier: run the candidate SQL and the gold SQL, compare their result sets.

The guard `check_read_only(sql)` is shared with the SQL tool environment
(assay/operators/tools/sql_env.py). It reads the statement the way DuckDB does, with DuckDB's
own parser: `duckdb.extract_statements` gives the statement types (only one `SELECT` is
allowed, so writes, ATTACH, INSTALL/LOAD, COPY, SET, PRAGMA and multi-statement strings are
refused), and `json_serialize_sql` gives the query tree, which is walked for table functions
(`read_csv`, `read_parquet`, `glob`, `read_text`...: only `range` / `generate_series` /
`unnest` are allowed), file paths used as tables (`FROM '/etc/passwd'`) and scalar functions
that reach outside the database (`getenv`). Refused SQL never runs. Queries that pass run on a
connection opened read-only with `enable_external_access=false` and a locked configuration
(defence in depth), interrupted after `timeout_s`, with at most `row_limit` rows fetched.
"""

from __future__ import annotations

import decimal
import functools
import json
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from pydantic import PrivateAttr

from assay.curate.errors import AssayError
from assay.curate.registry import register
from assay.judges.base import Verdict, Verifier

# table functions that compute rows without touching files, the network or settings
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
# scalar functions that reach outside the database
UNSAFE_FUNCTIONS = frozenset({"getenv"})
# a table name that is really a path or URL (DuckDB's replacement scans read such files)
_PATHLIKE = re.compile(r"[/\\:.~*?]")
_SQL_BLOCK = re.compile(r"```(?:sql|duckdb)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)

READ_ONLY_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}


class UnsafeSqlError(AssayError):
    """The SQL is not one read-only SELECT over the database's own tables; it was not run."""


class SqlRunError(AssayError):
    """The SQL was allowed but failed when it ran (syntax, binding, timeout, too many rows)."""


def check_read_only(sql: str) -> None:
    """Raise UnsafeSqlError (with the reason) unless `sql` is one read-only SELECT.

    Example: `check_read_only("SELECT * FROM read_csv('/etc/passwd')")` raises
    "table function read_csv is not allowed (reads files or settings)".
    """
    if not isinstance(sql, str) or not sql.strip():
        raise UnsafeSqlError("empty SQL")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise UnsafeSqlError(f"cannot parse SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise UnsafeSqlError(f"expected one statement, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise UnsafeSqlError(f"{kind.name} statements are not allowed (only SELECT)")
    tree = serialize_sql(sql)
    for node in _nodes(tree):
        node_type = node.get("type")
        if node_type == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in SAFE_TABLE_FUNCTIONS:
                raise UnsafeSqlError(
                    f"table function {name} is not allowed (reads files or settings)"
                )
        elif node_type == "BASE_TABLE":
            table = str(node.get("table_name", ""))
            if _PATHLIKE.search(table) or node.get("catalog_name"):
                catalog = node.get("catalog_name")
                name = f"{catalog}.{table}" if catalog else table
                raise UnsafeSqlError(f"{name!r} is not a table of this database")
        elif node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in UNSAFE_FUNCTIONS:
                raise UnsafeSqlError(f"function {name} is not allowed")


def serialize_sql(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of a SELECT as JSON (raises UnsafeSqlError when it cannot)."""
    text = _serialized(sql)
    tree = json.loads(text) if text else {"error": True}
    if tree.get("error"):
        message = tree.get("error_message", "not a serializable SELECT")
        raise UnsafeSqlError(f"cannot read the query: {message}")
    return tree


@functools.lru_cache(maxsize=4096)
def _serialized(sql: str) -> str | None:
    # opening an in-memory DuckDB costs ~10 ms: one per thread, kept (the guard runs once or
    # twice per verified row; gold queries repeat, hence the cache)
    con = getattr(_PARSER, "con", None)
    if con is None:
        con = _PARSER.con = duckdb.connect(config=READ_ONLY_CONFIG)
    row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    return row[0] if row else None


_PARSER = threading.local()


def is_ordered(sql: str) -> bool:
    """Whether the query's outermost node ends in ORDER BY (its row order is then meaningful)."""
    statements = serialize_sql(sql).get("statements") or [{}]
    node = statements[0].get("node") or {}
    return any(m.get("type") == "ORDER_MODIFIER" for m in node.get("modifiers") or [])


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


_OPEN: dict[str, duckdb.DuckDBPyConnection] = {}
_OPEN_LOCK = threading.Lock()


def open_read_only(database: str | Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a DuckDB file that cannot reach files, network or settings.

    Every caller gets its own cursor (interruptible on its own) on one shared read-only
    instance per file: DuckDB refuses a second instance of a file with another configuration.
    """
    path = Path(database).resolve()
    if not path.exists():
        raise AssayError(f"DuckDB database {str(database)!r} does not exist")
    with _OPEN_LOCK:
        base = _OPEN.get(str(path))
        if base is None:
            base = _OPEN[str(path)] = duckdb.connect(
                str(path), read_only=True, config=READ_ONLY_CONFIG
            )
        return base.cursor()


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    seconds: float


def run_read_only(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    timeout_s: float = 5.0,
    row_limit: int = 10_000,
    checked: bool = False,
) -> QueryResult:
    """Guard, then run `sql` on `con`; interrupted after `timeout_s`, at most `row_limit` rows.
    `checked=True` says the caller already ran `check_read_only(sql)` (the guard parses the
    query twice; a test suite runs one query on several databases).

    Raises UnsafeSqlError (never run) or SqlRunError (ran and failed, timed out or returned
    more than `row_limit` rows).
    """
    if not checked:
        check_read_only(sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    start = time.perf_counter()
    timer.start()
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchmany(row_limit + 1)
        columns = [d[0] for d in cursor.description or []]
    except duckdb.InterruptException:
        raise SqlRunError(f"query interrupted after the {timeout_s:g} s timeout") from None
    except duckdb.Error as exc:
        if time.perf_counter() - start >= timeout_s:
            raise SqlRunError(f"query interrupted after the {timeout_s:g} s timeout") from None
        raise SqlRunError(f"query failed: {_first_line(exc)}") from None
    finally:
        timer.cancel()
    if len(rows) > row_limit:
        raise SqlRunError(f"query returned more than the row limit ({row_limit} rows)")
    return QueryResult(columns, rows, time.perf_counter() - start)


def extract_sql(text: str | None) -> str:
    """The SQL in a model answer: the last ```sql block, else the whole text."""
    text = text or ""
    blocks = _SQL_BLOCK.findall(text)
    return (blocks[-1] if blocks else text).strip().rstrip(";").strip()


# --- comparing result sets ---------------------------------------------------------------


def _cell(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float, decimal.Decimal)):
        return float(value)
    return str(value) if not isinstance(value, str) else value


def _cells_equal(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    return a == b


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # numbers rounded so that near-equal values land in the same place
    return tuple(
        (0, "") if v is None else (1, f"{v:.6g}") if isinstance(v, float) else (2, str(v))
        for v in row
    )


def same_results(
    got: Sequence[tuple[Any, ...]],
    gold: Sequence[tuple[Any, ...]],
    ordered: bool,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
) -> tuple[bool, str]:
    """Compare two result sets (column names ignored, numbers within a tolerance)."""
    a = [tuple(_cell(v) for v in row) for row in got]
    b = [tuple(_cell(v) for v in row) for row in gold]
    if len(a) != len(b):
        return False, f"{len(a)} rows, gold has {len(b)}"
    if a and len(a[0]) != len(b[0]):
        return False, f"{len(a[0])} columns, gold has {len(b[0])}"
    if not ordered:
        a, b = sorted(a, key=_sort_key), sorted(b, key=_sort_key)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if not all(_cells_equal(p, q, rel_tol, abs_tol) for p, q in zip(x, y, strict=True)):
            where = f"row {i}" if ordered else "sorted row " + str(i)
            return False, f"{where} differs: got {x!r}, gold {y!r}"
    return True, f"same {len(a)} rows" + (" in order" if ordered else "")


@register
class SqlExecutionVerifier(Verifier):
    """Execute the candidate SQL and the gold SQL on a DuckDB database; compare the results.

    The candidate is the model's answer (its last ```sql block, or the whole text); it must
    pass `check_read_only` (one SELECT, no files, no settings) or it is refused unrun. Both
    queries run read-only, each interrupted after `timeout_s` and limited to `row_limit`
    rows. Results are compared as multisets of rows (as lists when the gold query ends in
    ORDER BY), ignoring column names, numbers equal within `rel_tol`.

    `test_suite` (more DuckDB files with the same schema and other data) makes the check a
    test-suite execution match (Zhong et al., 2020): the candidate must also give the gold
    query's result on every one of them. One database lets a wrong query pass when both
    happen to return the same value (a `COUNT(*)` of 0 is common); databases whose data are
    built to tell queries apart catch that (random reseeds of the same data often do not).

    Input columns: `column` (candidate SQL or answer text), `gold_column` (gold SQL),
    `database_column` if set (a DuckDB path per row; otherwise `database`).
    Output columns: `output_column` (bool), `<output_column>_score`, `<output_column>_reason`.
    Rejects (when `drop_incorrect`): "unsafe SQL: ...", "candidate failed: ...",
    "different results: ...".

    Example:

        SqlExecutionVerifier(database="shop.duckdb", column="generation", gold_column="gold_sql")
        # {"generation": "SELECT COUNT(id) FROM orders", "gold_sql": "SELECT COUNT(*) FROM orders"}
        # -> correct (same 1 rows)
    """

    column: str = "generation"
    gold_column: str = "gold_sql"
    database: str | None = None
    database_column: str | None = None
    timeout_s: float = 5.0
    row_limit: int = 10_000
    rel_tol: float = 1e-6
    test_suite: list[str] = []

    # one connection per (database, thread): the executor runs batches in worker threads, and
    # a DuckDB connection must not run two queries at once
    _connections: dict[tuple[str, int], duckdb.DuckDBPyConnection] = PrivateAttr(
        default_factory=dict
    )
    _gold_cache: dict[tuple[str, str], QueryResult] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        if not self.database and not self.database_column:
            raise ValueError("give database (a DuckDB file) or database_column")

    def extra_columns(self) -> list[str]:
        return [self.database_column] if self.database_column else []

    def connection(self, database: str) -> duckdb.DuckDBPyConnection:
        key = (database, threading.get_ident())
        con = self._connections.get(key)
        if con is None:
            con = self._connections[key] = open_read_only(database)
        return con

    def check(self, candidate: Any, gold: Any, row: dict[str, Any]) -> Verdict:
        database = (row.get(self.database_column) if self.database_column else None) or (
            self.database
        )
        if not database:
            return Verdict(False, 0.0, "no database for this row")
        gold_sql = extract_sql(str(gold or ""))
        sql = extract_sql(candidate if isinstance(candidate, str) else None)
        try:
            check_read_only(sql)
        except UnsafeSqlError as exc:
            return Verdict(False, 0.0, f"unsafe SQL: {exc}")
        detail = ""
        for i, path in enumerate([str(database), *self.test_suite]):
            same, detail = self._compare(path, sql, gold_sql)
            if same is None:
                return Verdict(False, 0.0, detail)
            if not same:
                where = f" on test-suite database {i} ({Path(path).name})" if i else ""
                return Verdict(False, 0.0, f"different results{where}: {detail}")
        if self.test_suite:
            detail += f" on {1 + len(self.test_suite)} databases"
        return Verdict(True, 1.0, detail)

    def _compare(self, database: str, sql: str, gold_sql: str) -> tuple[bool | None, str]:
        """(same results?, detail) on one database; None when the candidate cannot run."""
        con = self.connection(database)
        key = (database, gold_sql)
        if key not in self._gold_cache:
            try:
                self._gold_cache[key] = run_read_only(con, gold_sql, self.timeout_s, self.row_limit)
            except (UnsafeSqlError, SqlRunError) as exc:
                raise AssayError(
                    f"{self.name}: the gold SQL {gold_sql!r} fails on {database}: {exc}"
                ) from None
        expected = self._gold_cache[key]
        try:
            got = run_read_only(con, sql, self.timeout_s, self.row_limit, checked=True)
        except SqlRunError as exc:
            return None, f"candidate failed: {exc}"
        return same_results(got.rows, expected.rows, is_ordered(gold_sql), self.rel_tol)
