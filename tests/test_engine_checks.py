"""check_result's shortcut: rows that are provably the input's skip the id comparison, and
every result that is not provably so still gets the full check."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assay.curate.errors import StageError
from assay.curate.executors.checks import check_result, same_values
from assay.curate.stage import Filter, Map, Outcome, split_by_mask

TABLE = pa.table({"id": [str(i) for i in range(6)], "text": ["a", "bb", "ccc", "d", "ee", "f"]})


class Noop(Map):
    def map(self, table: pa.Table) -> pa.Table:
        return table


class Short(Filter):
    def keep(self, table: pa.Table) -> pa.Array:
        return pc.less(pc.utf8_length(table["text"]), 2)


def test_same_values_is_about_memory_not_equality() -> None:
    ids = TABLE["id"]
    assert same_values(ids, TABLE["id"])
    assert same_values(ids, TABLE.set_column(1, "text", pc.utf8_upper(TABLE["text"]))["id"])
    copy = pa.chunked_array([pa.array(ids.to_pylist())])
    assert copy.equals(ids) and not same_values(copy, ids)  # equal, but not provably so
    assert not same_values(ids.slice(1), ids)
    assert not same_values(ids.slice(0, 5), ids)


def test_a_map_that_keeps_the_id_column_passes_unchanged() -> None:
    out = TABLE.set_column(1, "text", pc.utf8_upper(TABLE["text"]))
    kept, rejected, created = check_result(Noop(), TABLE, out, 0)
    assert kept is out and rejected is None and created is None


def test_a_split_by_mask_outcome_passes_with_its_reasons() -> None:
    result = Short().process(TABLE)
    assert isinstance(result, Outcome)
    kept, rejected, _ = check_result(Short(), TABLE, result, 0)
    assert kept["id"].to_pylist() == ["0", "3", "5"]
    assert rejected is not None
    assert rejected["id"].to_pylist() == ["1", "2", "4"]
    assert rejected["_reason"].to_pylist() == ["dropped by Short"] * 3


def test_a_map_that_drops_a_row_from_the_same_memory_is_still_refused() -> None:
    with pytest.raises(StageError, match="never be dropped silently"):
        check_result(Noop(), TABLE, TABLE.slice(0, 5), 0)


def test_an_outcome_whose_kept_rows_were_replaced_gets_the_full_check() -> None:
    result = split_by_mask("Short", TABLE, [True, False, False, True, False, True], "x")
    assert isinstance(result, Outcome)
    result.kept = result.kept.slice(1)  # row "0" now neither kept nor rejected
    assert result.is_split_of() is None
    with pytest.raises(StageError, match=r"row id '0'.*never be dropped silently"):
        check_result(Short(), TABLE, result, 0)


def test_a_split_of_another_table_gets_the_full_check() -> None:
    other = pa.table({"id": ["0", "1", "x"], "text": ["a", "bb", "c"]})
    result = split_by_mask("Short", other, [True, False, True], "x")
    with pytest.raises(StageError, match="not in its input"):
        check_result(Short(), TABLE, result, 0)


def test_engine_output_is_read_back_unchecked_and_a_source_is_checked(tmp_path) -> None:
    import pyarrow.parquet as pq

    from assay.curate.errors import SourceError
    from assay.curate.sources import ParquetSource, read_batches

    repeated = pa.table({"id": ["a", "a"], "text": ["x", "y"]})
    pq.write_table(repeated, tmp_path / "part-000000.parquet")
    source = ParquetSource(tmp_path, rows=2)
    assert source.count_rows() == 2
    # a segment's own output: its ids passed the checks when it was written
    assert next(read_batches(source, 10, checked=True)).equals(repeated)
    with pytest.raises(SourceError, match="'a' appears more than once"):
        next(read_batches(source, 10))
