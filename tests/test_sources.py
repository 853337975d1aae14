"""Every source kind yields the same rows with stable ids; bad files name the file and row."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assay.curate.errors import SourceError
from assay.curate.sources import as_source, read_batches, rebatch

ROWS = [{"text": f"row {i}", "n": i} for i in range(23)]


def _all(source, batch_size=5) -> list[dict]:
    out = []
    for batch in read_batches(as_source(source), batch_size):
        assert batch.num_rows <= batch_size
        out.extend(batch.to_pylist())
    return out


def _write_all_formats(tmp_path: Path) -> dict[str, object]:
    table = pa.Table.from_pylist(ROWS)
    pq.write_table(table.slice(0, 10), tmp_path / "a.parquet")
    (tmp_path / "dir").mkdir()
    pq.write_table(table.slice(0, 10), tmp_path / "dir" / "part-0.parquet")
    pq.write_table(table.slice(10), tmp_path / "dir" / "part-1.parquet")
    with open(tmp_path / "rows.jsonl", "w") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    pl.DataFrame(ROWS).write_csv(tmp_path / "rows.csv")
    return {
        "parquet_dir": tmp_path / "dir",
        "jsonl": tmp_path / "rows.jsonl",
        "csv": tmp_path / "rows.csv",
        "arrow": table,
        "polars": pl.DataFrame(ROWS),
        "hf": datasets.Dataset.from_list(ROWS),
        "list": ROWS,
    }


def test_every_source_kind_gives_the_same_rows_and_positional_ids(tmp_path: Path) -> None:
    expected = [{"id": str(i), **r} for i, r in enumerate(ROWS)]
    for kind, source in _write_all_formats(tmp_path).items():
        got = _all(source)
        assert [{k: r[k] for k in ("id", "text", "n")} for r in got] == expected, kind


def test_row_counts_are_known_for_files_and_tables(tmp_path: Path) -> None:
    for kind, source in _write_all_formats(tmp_path).items():
        assert as_source(source).count_rows() == len(ROWS), kind


def test_a_source_id_column_is_kept_as_string() -> None:
    got = _all([{"id": 10 + i, "text": "x"} for i in range(3)])
    assert [r["id"] for r in got] == ["10", "11", "12"]


def test_duplicate_and_null_ids_are_refused_with_the_id() -> None:
    with pytest.raises(SourceError, match="'a' appears more than once"):
        _all([{"id": "a"}, {"id": "b"}, {"id": "a"}])
    with pytest.raises(SourceError, match="row 1 has a null 'id'"):
        _all([{"id": "a"}, {"id": None}])


def test_rebatch_gives_exact_sizes_across_input_chunks() -> None:
    chunks = [pa.table({"x": list(range(k))}) for k in (3, 7, 1, 9)]
    sizes = [t.num_rows for t in rebatch(chunks, 4)]
    assert sizes == [4, 4, 4, 4, 4]
    assert sum(sizes) == 20


def test_non_utf8_jsonl_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "fine"}\n{"text": "bad \xff byte"}\n')
    with pytest.raises(SourceError, match=r"bad\.jsonl: row 2 \(line 3\) is not valid UTF-8"):
        _all(path)


def test_non_utf8_csv_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"text\nok\n\xfe\xfe\n")
    with pytest.raises(SourceError, match=r"bad\.csv: row 1 \(line 3\) is not valid UTF-8"):
        _all(path)


def test_missing_and_unknown_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope.jsonl"):
        as_source(tmp_path / "nope.jsonl")
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(SourceError, match="data.xml"):
        as_source(tmp_path / "data.xml")


def test_unreadable_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="broken.parquet"):
        _all(path)
