"""Writing a batch's Parquet shards: atomically, durably, and no dearer than their use needs.

Two kinds of shard:
- scratch (`scratch=True`): the output of a segment that is not the last, read back by the
  next segment (its fit and its batches) and by a resume, never by the user. Written
  uncompressed, without dictionaries or statistics: for text, Snappy and a dictionary that
  falls back cost more CPU to write and to read twice than the bytes they save.
- kept (the run's output and its rejects): Snappy; a dictionary only for the columns whose
  values repeat (judged on the first rows), statistics only for columns that are not
  strings (min/max of free text prune nothing).

Every shard is written under a temporary name, fsynced and renamed, so a reader never sees a
partial file and the file survives a power loss once its folder is fsynced too
(`fsync_dir`, which the executor calls before it commits the batch). The executor writes a
batch's shards with `write_pending` and makes them durable at its commit (`publish`), so the
workers that write them never wait on the disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# rows sampled to decide whether a string column's values repeat enough for a dictionary
_SAMPLE = 1024


def write_options(table: pa.Table, scratch: bool) -> dict[str, Any]:
    """Keyword arguments for `pyarrow.parquet.write_table` for this table and shard kind."""
    if scratch:
        return {"compression": "none", "use_dictionary": False, "write_statistics": False}
    schema = table.schema
    if any(pa.types.is_nested(f.type) for f in schema):
        # per-column settings name leaf paths; keep pyarrow's defaults for nested tables
        return {"compression": "snappy"}
    dictionary, statistics = [], []
    for name, column in zip(schema.names, table.columns, strict=True):
        if _is_text(column.type):
            if _repeats(column):
                dictionary.append(name)
        else:
            dictionary.append(name)
            statistics.append(name)
    return {"compression": "snappy", "use_dictionary": dictionary, "write_statistics": statistics}


def write_atomic(table: pa.Table, path: Path, options: bool | dict[str, Any] = False) -> None:
    """Write under a temporary name, fsync, rename: a reader never sees a partial shard.

    `options`: `write_options`' result, or `scratch` to have them judged on this table.
    """
    publish(write_pending(table, path, options), path)


def write_pending(table: pa.Table, path: Path, options: bool | dict[str, Any] = False) -> Path:
    """Write `path`'s content under its temporary name (returned), not yet durable: `publish`
    makes it so and gives it its name."""
    if not isinstance(options, dict):
        options = write_options(table, scratch=options)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, **options)
    return tmp


def publish(tmp: Path, path: Path) -> None:
    """fsync a pending shard, then rename it to `path` (its folder's fsync, `fsync_dir`,
    makes the rename durable)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def fsync_dir(folder: Path) -> None:
    """Make the renames into `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_text(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _repeats(column: pa.ChunkedArray) -> bool:
    """Whether at most half of the first rows' values are distinct."""
    sample = column.slice(0, _SAMPLE)
    if not len(sample):
        return True
    return pc.count_distinct(sample, mode="all").as_py() * 2 <= len(sample)
