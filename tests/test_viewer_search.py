"""The search index answers text searches with the same rows, order and totals as the Parquet
path (real Parquet shards, real DuckDB), and falls back where it could differ."""

from __future__ import annotations

import itertools
import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assay.viewer import queries, search
from assay.viewer.lru import LRU
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
    monkeypatch.setattr(queries, "_TOTALS", LRU(8))
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


# the index a pipeline writes at the end of a run -------------------------------------------


def pipeline_run(workspace: Path) -> tuple[str, Path]:
    """A real pipeline run (MinLength drops short rows) in several shards."""
    from assay.curate.pipeline import Pipeline
    from assay.operators.text import MinLength

    rows = [
        {"id": f"r{n:04d}", "text": f"{WORDS[n % len(WORDS)]} text {n % 7}" * (1 + n % 3)}
        for n in range(230)
    ]
    for n, row in enumerate(rows):
        row["score"] = None if n % 9 == 0 else (n * 37 % 100) / 100
        row["ok"] = n % 3 != 0
    pipeline = Pipeline([MinLength(column="text", chars=12)], name="index-run", batch_size=40)
    result = pipeline.run(rows, workspace=workspace, progress="quiet")
    return result.run_id, result.run_dir


class ParquetOnly(ParquetTable):
    """A table that never uses nor builds an index (its own key: no cache entry shared)."""

    def index(self) -> None:
        return None

    def start_index(self, schema: dict[str, str]) -> None:
        return None


def parquet_only(files: list[str]) -> ParquetTable:
    table = ParquetOnly(files)
    table.key = (*table.key, "parquet only")
    return table


def same_pages(table: ParquetTable, files: list[str], queries: list[str]) -> list[str]:
    """Every page `table` gives matches the Parquet path's; returns which path answered."""
    cols = ["id", "text", "score", "ok"]
    via = []
    for q, offset, sort in itertools.product(queries, (0, 30, 10_000), (None, "score")):
        a = table.page([], q, offset, 25, cols, sort)
        b = parquet_only(files).page([], q, offset, 25, cols, sort)
        assert b.via == "parquet"
        assert (a.total, a.offset, a.rows) == (b.total, b.offset, b.rows), (q, offset, sort)
        via.append(a.via)
    return via


def test_a_pipeline_run_writes_an_index_the_first_search_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id, run_dir = pipeline_run(tmp_path / "ws")
    files = sorted(str(p) for p in (run_dir / "output").glob("*.parquet"))
    assert len(files) > 1
    path = search.index_path(run_dir)
    assert path.is_file()
    assert not list(path.parent.glob(".*.tmp*"))  # written by rename, nothing half-done left

    def no_build(*args, **kwargs):
        raise AssertionError("a current written index is used: nothing is built")

    monkeypatch.setattr(search.SearchIndex, "build", no_build)
    table = ParquetTable(files, index_file=path)
    assert table.page().via == "index"  # a first page copies nothing into memory
    assert table.index() is not None and not table.index().loading
    # a search straight after the run: answered by the written index, the Parquet path's rows
    first = table.page([], "straße", 0, 25, ["id", "text", "score"])
    slow = parquet_only(files).page([], "straße", 0, 25, ["id", "text", "score"])
    assert first.via == "index" and first.total == slow.total > 0 and first.rows == slow.rows
    # so is an unfiltered page (the first, a deep one, past the end), and the schema
    cols = ["id", "text", "score", "ok"]
    assert table.page().via == "index"  # every column of this run is a scalar
    for offset in (0, 30, 199, 10_000):
        a = table.page([], "", offset, 25, cols)
        b = parquet_only(files).page([], "", offset, 25, cols)
        assert a.via == "index" and (a.total, a.offset, a.rows) == (b.total, b.offset, b.rows)
    assert table.schema() == parquet_only(files).schema()
    index = table.index()
    assert index is not None and index.written
    # the first search started a copy into memory; pages read the file until it is done
    assert index.loading and index.loaded.wait(30)
    assert index.table == index.name
    assert set(same_pages(table, files, ["e", "TEXT 3", "nothing like it", "100%"])) == {"index"}
    # filters and sorts without a search keep the Parquet path
    assert table.page([ColumnFilter("ok", "is false")], "", 0, 10, cols).via == "parquet"
    assert table.page([], "", 0, 10, cols, "score").via == "parquet"
    # the viewer's page over HTTP: the rows of the search, read from the written index
    from fastapi.testclient import TestClient

    from assay.viewer.app import create_app

    client = TestClient(create_app(tmp_path / "ws"), base_url="http://127.0.0.1")
    html = client.get(f"/runs/{run_id}/data", params={"q": "straße"}).text
    shown = re.findall(r'class="row-link"[^>]*>(r\d{4})<', html)
    expected = parquet_only(files).page([], "straße", 0, 50, ["id"])
    assert shown == [r["id"] for r in expected.rows]
    assert f">{expected.total:,}</b> rows match" in html


def rewrite(path: str, change: str) -> None:
    table = pq.read_table(path)
    if change == "text":
        texts = [f"{t} zanzibar" for t in table.column("text").to_pylist()]
        table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
    elif change == "fewer rows":
        table = table.slice(0, table.num_rows - 3)
    pq.write_table(table, path)


@pytest.mark.parametrize("change", ["text", "fewer rows", "shard added", "shard removed"])
def test_a_dataset_changed_after_its_index_was_written_never_uses_it(
    tmp_path: Path, change: str
) -> None:
    _, run_dir = pipeline_run(tmp_path / "ws")
    out = run_dir / "output"
    path = search.index_path(run_dir)
    files = sorted(str(p) for p in out.glob("*.parquet"))
    old = ParquetTable(files, index_file=path)
    assert old.page([], "zanzibar").total == 0 and old.index() is not None
    if change in ("text", "fewer rows"):
        rewrite(files[1], change)
    elif change == "shard added":
        extra = pq.read_table(files[0])  # new ids: sorts tie on (score, id) only as before
        ids = pa.array([f"x{i}" for i in extra.column("id").to_pylist()])
        extra = extra.set_column(extra.schema.get_field_index("id"), "id", ids)
        pq.write_table(extra, out / "part-99999.parquet")
        rewrite(str(out / "part-99999.parquet"), "text")
    else:
        Path(files[-1]).unlink()
    files = sorted(str(p) for p in out.glob("*.parquet"))
    assert search.open_written(("probe", change), files, path) is None
    table = ParquetTable(files, index_file=path)
    assert table.index() is None  # not the written one; an in-memory one starts after a page
    queries_ = ["zanzibar", "e", "text 3"]
    assert set(same_pages(table, files, queries_)) <= {"parquet", "index"}
    built = search.lookup(table.key)
    assert built is not None and built.written is None and built.wait(30)
    # once built in memory, from the shards as they are now: still the Parquet path's rows
    assert set(same_pages(table, files, queries_)) == {"index"}
    # the new text is found (the written index, from before the change, has none of it)
    found = table.page([], "zanzibar")
    assert found.via == "index"
    assert (found.total > 0) == (change in ("text", "shard added"))


def test_a_shard_changed_while_the_index_is_written_writes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = shards(tmp_path / "ws" / "runs" / "r1" / "output")
    entries = search.shard_entries
    calls = []

    def changing(fs: list[str]) -> list[list]:
        calls.append(1)
        if len(calls) == 2:  # after the rows were read, before the rename
            rewrite_score(fs[0])
        return entries(fs)

    def rewrite_score(f: str) -> None:
        t = pq.read_table(f)
        pq.write_table(t.slice(1), f)

    from assay.curate import search_index

    monkeypatch.setattr(search_index, "shard_entries", changing)
    path = search.index_path(tmp_path / "ws" / "runs" / "r1")
    assert search.write_index(files, path) is None
    assert not path.exists() and not list(path.parent.glob("*"))


def test_written_index_of_another_version_or_shards_is_refused(tmp_path: Path) -> None:
    files = shards(tmp_path / "ws" / "runs" / "r1" / "output")
    path = search.index_path(tmp_path / "ws" / "runs" / "r1")
    assert search.write_index(files, path) == path
    assert search.open_written(("v", 1), files[:2], path) is None  # a shard fewer
    index = search.open_written(("v", 2), files, path)
    assert index is not None and index.written and index.wait(0)
    index.drop()
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute("update meta set version = version + 1")
    assert search.open_written(("v", 3), files, path) is None


def test_the_background_build_is_niced_relative_to_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = shards(tmp_path / "ws" / "runs" / "r1" / "output")
    seen = []
    monkeypatch.setattr(search.os, "getpriority", lambda which, who: 12)
    monkeypatch.setattr(
        search.os, "setpriority", lambda which, who, value: seen.append(value) or None
    )
    table = ParquetTable(files)
    table.page()
    index = search.lookup(table.key)
    assert index is not None and index.wait(30)
    assert seen == [19]  # 12 + 10, capped: never below the process's own niceness
