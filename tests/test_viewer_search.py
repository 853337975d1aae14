"""The search index answers text searches with the same rows, order and totals as the Parquet
path (real Parquet shards, real DuckDB), and falls back where it could differ."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assay.viewer import queries, search
from assay.viewer.queries import ColumnFilter, ParquetTable

STEP = pa.struct([("step_id", pa.string()), ("text", pa.string())])
WORDS = [
    "Größe",
    "İstanbul",
    "KELVIN",
    "100% sure",
    "a_b",
    "back\\slash",
    "MiXeD Case",
    "ende",
    "Ωmega",
    "straße",
    "",
]


def shards(folder: Path) -> list[str]:
    """Three shards (the middle one with an extra column): id, question, notes (nulls),
    score (nulls), ok, steps (list<struct>), and `extra` in shard 1 only."""
    folder.mkdir(parents=True)
    files = []
    n = 0
    for k in range(3):
        rows = []
        for _ in range(70 + 10 * k):
            w = WORDS[n % len(WORDS)]
            rows.append(
                {
                    "id": f"r{n:04d}",
                    "question": f"{w} question {n % 7}" if n % 13 else None,
                    "notes": None if n % 5 == 0 else f"start {WORDS[(n * 3) % len(WORDS)]}",
                    "score": None if n % 9 == 0 else (n * 37 % 100) / 100,
                    "ok": n % 3 != 0,
                    "steps": [{"step_id": f"r{n:04d}#0", "text": f"step {w}"}],
                    **({"extra": f"only here {w.upper()}"} if k == 1 else {}),
                }
            )
            n += 1
        table = pa.Table.from_pylist(rows)
        table = table.set_column(
            table.schema.get_field_index("steps"),
            "steps",
            pa.array([r["steps"] for r in rows], pa.list_(STEP)),
        )
        path = folder / f"part-{k:05d}.parquet"
        pq.write_table(table, path)
        files.append(str(path))
    return files


@pytest.fixture
def tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ParquetTable, ParquetTable]:
    files = shards(tmp_path / "ws" / "runs" / "r1" / "output")
    fast = ParquetTable(files)
    slow = ParquetTable(files)
    slow.key = (*slow.key, "parquet path")  # its own cache entries: nothing shared
    real = search.index_for

    def no_index_for_slow(key, *args, **kwargs):
        return None if key == slow.key else real(key, *args, **kwargs)

    monkeypatch.setattr(search, "index_for", no_index_for_slow)
    fast.page()  # the first page starts the build
    index = real(fast.key, files, fast.schema(), fast.count(), start=False)
    assert index is not None and index.wait(), index and index.error
    return fast, slow


QUERIES = ["größe", "GRÖSSE", "i̇", "k", "100%", "%", "a_b", "_", "\\", "e", "ende st"]
QUERIES += ["question 3", "R00", "ωMEGA", "start", "nothing like this", "only here", "STRASSE"]
FILTERS = [
    [],
    [ColumnFilter("ok", "is false")],
    [ColumnFilter("score", ">=", "0.5")],
    [ColumnFilter("question", "contains", "e"), ColumnFilter("notes", "not null")],
    [ColumnFilter("extra", "is null")],
]
SORTS = [(None, False), ("score", True), ("id", False), ("question", False)]


def test_index_gives_the_parquet_paths_rows_order_and_totals(tables) -> None:
    fast, slow = tables
    checked = 0
    for q, filters, (sort, desc) in itertools.product(QUERIES, FILTERS, SORTS):
        for offset in (0, 7, 500):
            cols = ["id", "question", "notes", "score", "ok", "extra"]
            a = fast.page(filters, q, offset, 10, cols, sort, desc)
            b = slow.page(filters, q, offset, 10, cols, sort, desc)
            assert b.via == "parquet"
            assert a.via == "index", (q, filters, sort)
            assert (a.total, a.offset, a.rows) == (b.total, b.offset, b.rows), (q, filters, sort)
            checked += a.total > 0
    assert checked > 300  # most combinations match something: the comparison is not vacuous
    # a match spanning two columns (question ends "ende", notes start "start") is no match
    assert fast.page([], "ende st").total == slow.page([], "ende st").total == 0


def test_queries_the_index_could_answer_differently_go_to_parquet(tables) -> None:
    fast, slow = tables
    # the separator; the Kelvin sign and dotted capital I (DuckDB lowers them to ASCII)
    for q in ["\x1f", "K", "İ", "İstanbul"]:
        a, b = fast.page([], q), slow.page([], q)
        assert a.via == "parquet"
        assert (a.total, a.rows) == (b.total, b.rows)
    # a page showing a list column the index does not hold is read from the shards
    a = fast.page([], "größe", 0, 10, ["id", "steps"])
    b = slow.page([], "größe", 0, 10, ["id", "steps"])
    assert a.via == "parquet" and a.rows == b.rows and a.total == b.total > 0


def test_index_build_writes_nothing_in_the_workspace(tmp_path: Path) -> None:
    files = shards(tmp_path / "ws" / "runs" / "r1" / "output")
    before = sorted(p for p in (tmp_path / "ws").rglob("*"))
    table = ParquetTable(files)
    table.page()
    index = search.index_for(table.key, files, table.schema(), table.count(), start=False)
    assert index is not None and index.wait()
    assert table.page([], "straße", columns=["id", "question"]).via == "index"
    assert sorted(p for p in (tmp_path / "ws").rglob("*")) == before


def test_evicted_index_falls_back_to_parquet(tables, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = tables
    index = search.index_for(fast.key, fast.files, fast.schema(), fast.count(), start=False)
    index.drop()  # as when a newer dataset pushes it out of the cache
    monkeypatch.setattr(queries, "_TOTALS", queries._LRU(8))
    a, b = fast.page([], "größe"), slow.page([], "größe")
    assert a.via == "parquet" and (a.total, a.rows) == (b.total, b.rows)


def test_search_while_the_index_builds_takes_the_parquet_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = shards(tmp_path / "ws" / "runs" / "r1" / "output")
    gate = threading.Event()
    build = search.SearchIndex.build

    def slow_build(self: search.SearchIndex) -> None:
        gate.wait(30)
        build(self)

    monkeypatch.setattr(search.SearchIndex, "build", slow_build)
    table = ParquetTable(files)
    cols = ["id", "question", "notes"]
    early = table.page([], "größe", 0, 10, cols)
    assert early.via == "parquet" and early.total > 0
    gate.set()
    index = search.index_for(table.key, files, table.schema(), table.count(), start=False)
    assert index is not None and index.wait(30)
    late = table.page([], "größe", 0, 10, cols)
    assert late.via == "index" and (late.total, late.rows) == (early.total, early.rows)
