"""Sources: where a pipeline's rows come from, read as a stream of Arrow batches.

`as_source` accepts a path (Parquet file or directory, `.jsonl`/`.ndjson`, `.csv`), a
`pyarrow.Table`, a polars DataFrame, a Hugging Face `datasets.Dataset` or a list of dicts.
`read_batches` gives every row its stable `id`: the source's own `id` column (as a string)
where it has one, else the row's position in the source.
"""

from __future__ import annotations

import glob
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from assay.curate.arrays import from_numpy
from assay.curate.errors import SourceError
from assay.curate.stage import ID

_READ_BLOCK = 1 << 22  # 4 MiB blocks: small enough to stream, large enough to parse fast


class Source(ABC):
    """A stream of raw Arrow batches (without ids); subclasses implement `record_batches`."""

    @abstractmethod
    def record_batches(self) -> Iterator[pa.RecordBatch | pa.Table]:
        """The raw rows, in source order, in batches of any size."""

    def count_rows(self) -> int | None:
        """The number of rows when it is cheap to know (for progress), else None."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__}


class FileSource(Source):
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"source file {str(self.path)!r} does not exist")

    def describe(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "path": str(self.path)}


class ParquetSource(FileSource):
    """One Parquet file, or every `*.parquet` under a directory in name order.

    `rows`: the row count when the caller knows it (saves reading every file's footer).
    """

    def __init__(self, path: str | os.PathLike[str], rows: int | None = None) -> None:
        super().__init__(path)
        self.rows = rows

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(
                Path(p) for p in glob.glob(str(self.path / "**/*.parquet"), recursive=True)
            )
        return [self.path]

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        for file in self.files():
            yield from parquet_batches(file)

    def count_rows(self) -> int | None:
        if self.rows is not None:
            return self.rows
        try:
            return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files())
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(
                f"cannot read Parquet metadata under {str(self.path)!r}: {exc}"
            ) from exc


def parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of one Parquet file; a failure to read it is a `SourceError`."""
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=65536)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"cannot read Parquet file {str(path)!r}: {exc}") from exc


class JsonlSource(FileSource):
    """A JSON Lines file: one JSON object per line."""

    header_lines = 0

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        try:
            reader = pajson.open_json(
                self.path, read_options=pajson.ReadOptions(block_size=_READ_BLOCK)
            )
            yield from reader
        except (pa.ArrowException, OSError) as exc:
            raise _explain_text_error(self.path, exc, header_lines=0) from exc

    def count_rows(self) -> int | None:
        return _count_lines(self.path)


class CsvSource(FileSource):
    """A CSV file with a header row."""

    header_lines = 1

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        try:
            reader = pacsv.open_csv(
                self.path, read_options=pacsv.ReadOptions(block_size=_READ_BLOCK)
            )
            for batch in reader:
                # the CSV reader turns a column with invalid UTF-8 into binary
                if any(pa.types.is_binary(f.type) for f in batch.schema):
                    raise _explain_text_error(self.path, None, header_lines=1)
                yield batch
        except (pa.ArrowException, OSError) as exc:
            raise _explain_text_error(self.path, exc, header_lines=1) from exc

    def count_rows(self) -> int | None:
        n = _count_lines(self.path)
        return None if n is None else max(n - 1, 0)


class TableSource(Source):
    """An in-memory Arrow table (polars frames, HF datasets and lists of dicts become one)."""

    def __init__(self, table: pa.Table, kind: str = "table") -> None:
        self.table = table
        self.kind = kind

    def record_batches(self) -> Iterator[pa.RecordBatch]:
        yield from self.table.to_batches(max_chunksize=65536)

    def count_rows(self) -> int:
        return self.table.num_rows

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "rows": self.table.num_rows}


def as_source(obj: Any) -> Source:
    """Turn a path, table, frame, dataset or list of dicts into a Source."""
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        suffix = path.suffix.lower()
        if path.is_dir() or suffix == ".parquet":
            return ParquetSource(path)
        if suffix in (".jsonl", ".ndjson", ".json"):
            return JsonlSource(path)
        if suffix == ".csv":
            return CsvSource(path)
        raise SourceError(
            f"cannot tell the format of {str(path)!r}: use .parquet, .jsonl, .ndjson or .csv"
        )
    if isinstance(obj, pa.Table):
        return TableSource(obj)
    if isinstance(obj, list):
        try:
            return TableSource(pa.Table.from_pylist(obj), kind="list")
        except (pa.ArrowException, UnicodeError) as exc:
            raise SourceError(f"cannot convert the list of rows to a table: {exc}") from exc
    module = type(obj).__module__
    if module.startswith("polars"):
        return TableSource(obj.to_arrow(), kind="polars")
    if module.startswith("datasets"):
        return TableSource(obj.data.table, kind="hf_dataset")
    raise SourceError(f"cannot read rows from a {type(obj).__name__}")


def read_batches(
    source: Source, batch_size: int, unique_ids: bool = False, checked: bool = False
) -> Iterator[pa.Table]:
    """The source's rows in batches of `batch_size`, each row with its stable `id`.

    With `unique_ids`, an `id` the source gives itself is also refused when an earlier batch
    had it (ids are unique within a batch either way; positional ids always are).
    `checked`: the rows are the engine's own (a segment's output, written from batches that
    passed its checks, with unique ids), so their ids and UTF-8 are not checked again.
    """
    offset = 0
    seen = _SeenIds() if unique_ids else None
    for table in rebatch(source.record_batches(), batch_size):
        if checked and ID in table.column_names:
            yield table
            offset += table.num_rows
            continue
        _check_utf8(table, offset, source)
        own_ids = ID in table.column_names
        table = with_ids(table, offset, source)
        if seen is not None and own_ids:
            seen.add(table[ID], source)
        yield table
        offset += table.num_rows


class _SeenIds:
    """The 64-bit hashes of every id read so far (about 60 MB per million ids)."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()

    def add(self, ids: pa.ChunkedArray, source: Source) -> None:
        hashes = pl.Series(ids.combine_chunks()).hash(seed=0).to_list()
        # a repeat of an earlier batch's id (or, about once in 1e8 at a million ids, a
        # 64-bit hash collision, which is reported as a repeat too)
        repeat = next((i for i, h in enumerate(hashes) if h in self.hashes), None)
        if repeat is not None:
            raise SourceError(
                f"{_where(source)}{ID!r} {ids[repeat].as_py()!r} appears more than once"
            )
        self.hashes.update(hashes)


def _check_utf8(table: pa.Table, offset: int, source: Source) -> None:
    """Refuse a batch with invalid UTF-8 in a string column, naming the row and column."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            continue
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            if isinstance(source, (JsonlSource, CsvSource)):
                raise _explain_text_error(source.path, exc, source.header_lines) from exc
            match = re.search(r"string index (\d+)", str(exc))
            row = f"row {offset + int(match.group(1))}, " if match else ""
            raise SourceError(f"{_where(source)}{row}column {name!r} is not valid UTF-8") from exc


def rebatch(batches: Iterable[pa.RecordBatch | pa.Table], size: int) -> Iterator[pa.Table]:
    """Regroup a stream of batches into tables of exactly `size` rows (the last may be short)."""
    pending: list[pa.Table] = []
    held = 0
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        pending.append(table)
        held += table.num_rows
        while held >= size:
            merged = pa.concat_tables(pending, promote_options="permissive")
            yield merged.slice(0, size).combine_chunks()
            rest = merged.slice(size)
            pending, held = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if held:
        yield pa.concat_tables(pending, promote_options="permissive").combine_chunks()


def with_ids(table: pa.Table, offset: int, source: Source | None = None) -> pa.Table:
    """Give each row a string `id`: the source's own (checked) or its position."""
    if ID in table.column_names:
        ids = table[ID]
        if ids.null_count:
            row = offset + pc.index(pc.is_null(ids), True).as_py()
            raise SourceError(f"{_where(source)}row {row} has a null {ID!r}")
        if ids.type != pa.string():
            table = table.set_column(table.column_names.index(ID), ID, pc.cast(ids, pa.string()))
        if pc.count_distinct(table[ID]).as_py() != table.num_rows:
            counts = pc.value_counts(table[ID])
            dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"]
            raise SourceError(f"{_where(source)}{ID!r} {dup.as_py()!r} appears more than once")
        return table
    ids = pc.cast(
        from_numpy(np.arange(offset, offset + table.num_rows, dtype=np.int64)), pa.string()
    )
    return table.add_column(0, ID, ids)


def _where(source: Source | None) -> str:
    if isinstance(source, FileSource):
        return f"{source.path}: "
    return ""


def _count_lines(path: Path) -> int | None:
    count = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            count += block.count(b"\n")
    return count


def _explain_text_error(path: Path, exc: Exception | None, header_lines: int) -> SourceError:
    """Name the row of a text file that broke the reader, when it is bad UTF-8."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                row = line_no - 1 - header_lines
                return SourceError(
                    f"{path}: row {row} (line {line_no}) is not valid UTF-8 "
                    f"(byte {line[bad.start : bad.start + 1]!r} at column {bad.start + 1})"
                )
    return SourceError(f"cannot read {str(path)!r}: {exc}")
