"""The run-end search index built from the output tables a run holds (`search_haystack`) is
the index built by reading the shards back: the same rows, haystack, types and order."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assay.curate import search_index
from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.search_index import index_path, write_index
from assay.operators.text import MinLength

# ASCII and not: the Kelvin sign and dotted capital I lower to other code points, ß and Σ
# have no ASCII lowercase, the separator itself, empty strings and NULLs
TEXTS = ["Plain ASCII", "KELVIN \u212a", "İstanbul", "Straße", "ΣΊΣΥΦΟΣ", "a\x1fb", "", None]


def write_shards(folder: Path, tables: list[pa.Table]) -> tuple[list[str], dict[str, pa.Table]]:
    folder.mkdir(parents=True)
    files, held = [], {}
    for k, table in enumerate(tables):
        path = folder / f"part-{k:06d}.parquet"
        pq.write_table(table, path)
        files.append(str(path))
        held[path.name] = table
    return files, held


def three_shards() -> list[pa.Table]:
    """Two VARCHAR columns with NULLs in either or both, a number, a list (not indexed),
    and a column only the middle shard has."""
    out = []
    for k in range(3):
        n = 40
        cols = {
            "id": [f"r{k}-{i}" for i in range(n)],
            "title": [TEXTS[(i + k) % len(TEXTS)] for i in range(n)],
            "body": [None if i % 3 == 0 else f"Body {TEXTS[i % len(TEXTS)]} {i}" for i in range(n)],
            "score": [i / 7 if i % 4 else None for i in range(n)],
            "tags": [["x", str(i)] for i in range(n)],
        }
        if k == 1:
            cols["extra"] = [f"EXTRA {i}" for i in range(n)]
        out.append(pa.table(cols))
    return out


def rows(path: Path) -> tuple[list, list]:
    with duckdb.connect(str(path), read_only=True) as con:
        types = con.execute(
            "select column_name, data_type from duckdb_columns() where table_name = 'rows'"
        ).fetchall()
        data = con.execute(f"select * from rows order by {search_index.POS}").fetchall()
        meta = con.execute("select version, shards, schema, rows from meta").fetchone()
    return types, data + [meta]


@pytest.mark.parametrize("held_every", [1, 2, 0])
def test_index_from_held_tables_equals_the_index_read_from_the_shards(
    tmp_path: Path, held_every: int
) -> None:
    files, held = write_shards(tmp_path / "out", three_shards())
    # every shard held, every other one (the rest read back), or none held
    tables = {
        name: t for i, (name, t) in enumerate(held.items()) if held_every and i % held_every == 0
    }
    from_shards = write_index(files, tmp_path / "a" / "i.duckdb")
    from_tables = write_index(files, tmp_path / "b" / "i.duckdb", tables=tables)
    assert from_shards and from_tables
    assert rows(from_tables) == rows(from_shards)
    with duckdb.connect(str(from_tables), read_only=True) as con:
        hay = con.execute(
            f"select {search_index.TEXT} from rows where {search_index.POS} = 1"
        ).fetchone()[0]
    # row 1 of shard 0: id, title (KELVIN + Kelvin sign, lowered to k by DuckDB), body
    assert hay == "r0-1\x1fkelvin k\x1fbody kelvin k 1"


@pytest.mark.parametrize("text", [["only"], []])
def test_one_or_no_varchar_column(tmp_path: Path, text: list[str]) -> None:
    n = len(TEXTS)
    table = pa.table({"n": list(range(n)), **{c: TEXTS for c in text}})
    files, held = write_shards(tmp_path / "out", [table, table])
    a = write_index(files, tmp_path / "a" / "i.duckdb")
    b = write_index(files, tmp_path / "b" / "i.duckdb", tables=held)
    assert a and b and rows(a) == rows(b)
    with duckdb.connect(str(b), read_only=True) as con:
        hay = [
            r[0]
            for r in con.execute(
                f"select {search_index.TEXT} from rows order by 1 nulls first"
            ).fetchall()
        ]
    assert None not in hay  # a NULL column joins as '' (concat_ws): a search never sees NULL


def test_shards_whose_arrow_types_differ_are_read_the_duckdb_way(tmp_path: Path) -> None:
    # an integer column in one shard and a string one in the other: Arrow cannot unify
    # them, DuckDB's union_by_name reads both as VARCHAR
    files, held = write_shards(
        tmp_path / "out",
        [pa.table({"v": [1, 2], "t": ["A", "B"]}), pa.table({"v": ["x", "Y"], "t": ["C", "D"]})],
    )
    a = write_index(files, tmp_path / "a" / "i.duckdb")
    b = write_index(files, tmp_path / "b" / "i.duckdb", tables=held)
    assert a and b and rows(a) == rows(b)
    assert [r[1] for r in rows(b)[0]] == ["BIGINT", "VARCHAR", "VARCHAR", "VARCHAR"]


def test_a_run_keeps_its_output_tables_for_the_index(tmp_path: Path) -> None:
    data = pa.table(
        {"id": [str(i) for i in range(30)], "text": [f"Row Text {i}" for i in range(30)]}
    )
    kept: dict[str, pa.Table] = {}
    pipeline = Pipeline([MinLength(column="text", chars=10)], search_index=False)
    result = pipeline.run(
        data,
        workspace=tmp_path / "ws",
        progress="quiet",
        executor=_Keeping(kept, batch_size=8),
    )
    names = sorted(p.name for p in result.output_dir.glob("*.parquet"))
    assert sorted(kept) == names and len(names) == 4
    for name in names:
        assert kept[name].equals(pq.read_table(result.output_dir / name))
    # and the default run writes the index from them: the rows of the shards
    default = Pipeline([MinLength(column="text", chars=10)]).run(
        data, workspace=tmp_path / "ws2", progress="quiet", executor=LocalExecutor(batch_size=8)
    )
    files = [str(f) for f in sorted(default.output_dir.glob("*.parquet"))]
    again = write_index(files, tmp_path / "again" / "i.duckdb")
    assert again and rows(index_path(default.run_dir)) == rows(again)


class _Keeping(LocalExecutor):
    """Passes its own dict as `keep_output` (the pipeline passes none: no index)."""

    def __init__(self, kept: dict[str, pa.Table], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.kept = kept

    def run(self, *args: object, keep_output: object = None, **kwargs: object):  # type: ignore[override]
        return super().run(*args, keep_output=self.kept, **kwargs)  # type: ignore[arg-type]
