"""The run-end search index: its off switch (pipeline, recipe, `assay run` flag), the written
file detached once copied into memory, and deep search pages answered from the kept matching
positions with the same rows in the same order as the Parquet path (real runs, real DuckDB)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from assay.curate.errors import RecipeError
from assay.curate.pipeline import Pipeline
from assay.curate.recipes import parse_recipe
from assay.operators.text import MinLength
from assay.viewer import queries, search, search_positions
from assay.viewer.lru import LRU
from assay.viewer.queries import ParquetTable

WORDS = ["alpha", "Beta", "straße", "GRÖSSE", "100% sure", "a_b", "gamma delta", ""]


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append(
            {
                "id": f"r{i:05d}",
                "text": f"{WORDS[i % len(WORDS)]} text {i % 7} " * (1 + i % 3),
                "score": None if i % 9 == 0 else (i * 37 % 100) / 100,
                "ok": i % 3 != 0,
            }
        )
    return out


def run(workspace: Path, n: int = 230, **kwargs) -> Path:
    pipeline = Pipeline([MinLength(column="text", chars=12)], name="switch", batch_size=40)
    return pipeline.run(rows(n), workspace=workspace, progress="quiet", **kwargs).run_dir


def output(run_dir: Path) -> list[str]:
    return sorted(str(p) for p in (run_dir / "output").glob("*.parquet"))


class ParquetOnly(ParquetTable):
    """Never uses nor builds an index (its own cache key)."""

    def __init__(self, files: list[str]) -> None:
        super().__init__(files)
        self.key = (*self.key, "parquet only")

    def index(self) -> None:
        return None

    def start_index(self, schema: dict[str, str]) -> None:
        return None


COLS = ["id", "text", "score", "ok"]


def assert_same_pages(table: ParquetTable, files: list[str], qs: list[str], offsets) -> set:
    via = set()
    for q in qs:
        for sort, desc in ((None, False), ("score", True), ("id", False)):
            for offset in offsets:
                a = table.page([], q, offset, 25, COLS, sort, desc)
                b = ParquetOnly(files).page([], q, offset, 25, COLS, sort, desc)
                assert b.via == "parquet"
                assert (a.total, a.offset, a.rows) == (b.total, b.offset, b.rows), (q, sort, offset)
                via.add(a.via)
    return via


def test_search_index_off_writes_no_file_and_the_viewer_still_searches(tmp_path: Path) -> None:
    run_dir = run(tmp_path / "ws", search_index=False)
    path = search.index_path(run_dir)
    assert not path.exists() and not (run_dir / "search").exists()
    files = output(run_dir)
    table = ParquetTable(files, index_file=path)
    assert table.index() is None
    first = table.page([], "straße", 0, 25, COLS)  # the Parquet path: no index yet
    expected = ParquetOnly(files).page([], "straße", 0, 25, COLS)
    assert first.via == "parquet" and first.total == expected.total > 0
    assert first.rows == expected.rows
    # the viewer builds its own index in memory, and answers the same from it
    built = search.lookup(table.key)
    assert built is not None and built.written is None and built.wait(30)
    assert assert_same_pages(table, files, ["straße", "text 3", "none such"], (0, 30)) == {"index"}
    assert not path.exists()
    # over HTTP, as a person sees it
    from fastapi.testclient import TestClient

    from assay.viewer.app import create_app

    client = TestClient(create_app(tmp_path / "ws"), base_url="http://127.0.0.1")
    html = client.get(f"/runs/{run_dir.name}/data", params={"q": "gamma delta"}).text
    shown = re.findall(r'class="row-link"[^>]*>(r\d{5})<', html)
    expected = ParquetOnly(files).page([], "gamma delta", 0, 50, ["id"])
    assert expected.total > 0 and shown == [r["id"] for r in expected.rows]


def test_search_index_on_by_default_and_per_run(tmp_path: Path) -> None:
    assert search.index_path(run(tmp_path / "a")).is_file()
    off = Pipeline([MinLength(column="text", chars=12)], search_index=False)
    result = off.run(rows(50), workspace=tmp_path / "b", progress="quiet")
    assert not search.index_path(result.run_dir).exists()
    # run(search_index=...) overrides the pipeline's setting for one run
    result = off.run(rows(50), workspace=tmp_path / "b", progress="quiet", search_index=True)
    assert search.index_path(result.run_dir).is_file()


RECIPE = """
name: tiny
source: rows.jsonl
{extra}
stages:
  - MinLength: {{column: text, chars: 12}}
"""


def test_recipe_key_and_cli_flag(tmp_path: Path) -> None:
    assert parse_recipe(RECIPE.format(extra="")).search_index is True
    assert parse_recipe(RECIPE.format(extra="search_index: false")).search_index is False
    with pytest.raises(RecipeError, match="search_index must be true or false"):
        parse_recipe(RECIPE.format(extra="search_index: maybe"))
    from assay.curate.cli import app

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(60)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(extra=""))
    made = {}
    for name, args in (("on", []), ("flag", ["--no-search-index"])):
        ws = tmp_path / name
        got = CliRunner().invoke(app, ["run", str(recipe), "-w", str(ws), "-q", *args])
        assert got.exit_code == 0, got.output
        (run_dir,) = (ws / "runs").iterdir()
        made[name] = search.index_path(run_dir).is_file()
    recipe.write_text(RECIPE.format(extra="search_index: false"))
    got = CliRunner().invoke(app, ["run", str(recipe), "-w", str(tmp_path / "key"), "-q"])
    assert got.exit_code == 0, got.output
    (run_dir,) = (tmp_path / "key" / "runs").iterdir()
    made["key"] = search.index_path(run_dir).is_file()
    assert made == {"on": True, "flag": False, "key": False}


def attached(path: Path) -> list[str]:
    with search.cursor() as con:
        return [
            r[0]
            for r in con.execute("select database_name, path from duckdb_databases()").fetchall()
            if r[1] and Path(r[1]).resolve() == path.resolve()
        ]


def test_the_written_file_is_detached_once_copied_into_memory(tmp_path: Path) -> None:
    run_dir = run(tmp_path / "ws")
    path = search.index_path(run_dir)
    files = output(run_dir)
    table = ParquetTable(files, index_file=path)
    assert table.page([], "straße", 0, 25, COLS).via == "index"
    index = table.index()
    assert index is not None and index.written in attached(path)
    assert index.loaded.wait(30) and index.table == index.name
    assert attached(path) == []  # read from memory only now
    assert assert_same_pages(table, files, ["straße", "text 3"], (0, 30)) == {"index"}
    # the file replaced by a newer write (a resumed run rewrote a shard): the new dataset
    # attaches the new file; the old dataset's copy in memory still answers as it did
    t = pq.read_table(files[1])
    texts = [f"{x} zanzibar" for x in t.column("text").to_pylist()]
    pq.write_table(
        t.set_column(t.schema.get_field_index("text"), "text", pa.array(texts)), files[1]
    )
    assert search.write_index(files, path) == path
    newer = ParquetTable(files, index_file=path)
    assert newer.key != table.key
    found = newer.page([], "zanzibar", 0, 25, COLS)
    expected = ParquetOnly(files).page([], "zanzibar", 0, 25, COLS)
    assert found.via == "index" and found.total == expected.total > 0
    assert found.rows == expected.rows
    assert newer.index().loaded.wait(30) and attached(path) == []
    assert assert_same_pages(newer, files, ["zanzibar", "text 3"], (0, 30)) == {"index"}
    assert table.page([], "zanzibar").total == 0  # the old rows, from the old copy


@pytest.mark.parametrize("where", ["file", "memory"])
def test_deep_search_pages_are_slices_of_the_kept_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    run_dir = run(tmp_path / "ws", n=3000)
    path = search.index_path(run_dir)
    files = output(run_dir)
    table = ParquetTable(files, index_file=path)
    table.page()
    index = table.index()
    assert index is not None
    monkeypatch.setattr(index, "load", lambda: None)  # pages read where the test says
    if where == "memory":
        search.SearchIndex.load(index)
        assert index.loaded.wait(30) and index.table == index.name
    monkeypatch.setattr(search_positions, "DEEP", 100)
    offsets = (0, 99, 100, 1280, 2990, 10_000)
    qs = ["text", "straße", "100%", "none such"]
    monkeypatch.setattr(search_positions, "MATCHES", LRU(64))
    assert assert_same_pages(table, files, qs, offsets) == {"index"}
    kept = search_positions.MATCHES.items
    assert len(kept) >= 2 * len(qs)  # unsorted and (deep) sorted searches keep positions
    assert all(len(v) == len(set(v.tolist())) for v in kept.values())
    # the top-N path (more matches than are kept) gives the same pages too
    monkeypatch.setattr(search_positions, "MAX_MATCHES", 5)
    monkeypatch.setattr(search_positions, "MATCHES", LRU(64))
    monkeypatch.setattr(queries, "_TOTALS", LRU(512))
    assert assert_same_pages(table, files, qs, offsets) == {"index"}
    assert any(v is False for v in search_positions.MATCHES.items.values())
    if where == "file":
        assert index.table == f"{index.written}.rows"  # every page above read the file
