"""How the executor writes its Parquet shards: scratch cheap, kept compact, both exact."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from assay.curate.executors.shards import write_atomic
from assay.curate.pipeline import Pipeline
from assay.operators.dedupe.exact import ExactDedupe
from assay.operators.text import MinLength

N = 3000
TABLE = pa.table(
    {
        "id": [str(i) for i in range(N)],
        "label": ["yes", "no", "maybe"] * (N // 3),
        "score": [float(i % 7) for i in range(N)],
    }
)


def _columns(path: Path) -> dict[str, pq.ColumnChunkMetaData]:
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}


def test_scratch_shard_is_uncompressed_without_dictionary_or_statistics(tmp_path: Path) -> None:
    path = tmp_path / "part-000000.parquet"
    write_atomic(TABLE, path, True)
    assert pq.read_table(path).equals(TABLE)
    for column in _columns(path).values():
        assert column.compression == "UNCOMPRESSED"
        assert "RLE_DICTIONARY" not in column.encodings
        assert not column.is_stats_set
    assert not path.with_name(path.name + ".tmp").exists()


def test_kept_shard_uses_a_dictionary_only_where_values_repeat(tmp_path: Path) -> None:
    path = tmp_path / "part-000000.parquet"
    write_atomic(TABLE, path)
    assert pq.read_table(path).equals(TABLE)
    columns = _columns(path)
    assert all(c.compression == "SNAPPY" for c in columns.values())
    assert "RLE_DICTIONARY" not in columns["id"].encodings  # every id distinct
    assert "RLE_DICTIONARY" in columns["label"].encodings
    assert "RLE_DICTIONARY" in columns["score"].encodings  # not text: pyarrow's default
    assert columns["score"].is_stats_set and not columns["id"].is_stats_set


def test_nested_and_empty_tables_round_trip(tmp_path: Path) -> None:
    nested = pa.table({"id": ["a", "b"], "tags": [["x"], ["y", "z"]], "m": [{"k": 1}, {"k": 2}]})
    empty = pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    for i, table in enumerate((nested, empty)):
        for scratch in (False, True):
            path = tmp_path / f"{i}-{scratch}.parquet"
            write_atomic(table, path, scratch)
            assert pq.read_table(path).equals(table)


def test_a_two_segment_run_keeps_scratch_work_and_compact_output(tmp_path: Path) -> None:
    rows = [{"id": str(i), "text": f"the same long sentence number {i % 50}"} for i in range(400)]
    result = Pipeline([MinLength(chars=5), ExactDedupe(columns=["text"])], batch_size=100).run(
        rows, workspace=tmp_path / "ws", progress="quiet"
    )
    assert result.to_arrow()["id"].to_pylist() == [str(i) for i in range(50)]
    work = sorted((result.run_dir / "work" / "seg-0").glob("*.parquet"))
    assert len(work) == 4
    assert all(c.compression == "UNCOMPRESSED" for c in _columns(work[0]).values())
    output = sorted(result.output_dir.glob("*.parquet"))
    assert all(c.compression == "SNAPPY" for c in _columns(output[0]).values())
