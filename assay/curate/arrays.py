"""Arrow arrays from numpy arrays and Python values, built from their buffers.

`pyarrow.array` and `pyarrow.scalar` import pandas the first time they are called (pyarrow
asks whether the value is a pandas object), which costs a process 0.2-1.3 s of CPU when
pandas is installed; the engine builds its bookkeeping columns (ids, stage indexes, reasons,
commit tables) here instead, so a pipeline that never touches pandas never imports it.

    from_numpy(np.arange(3))                  # int64 [0, 1, 2]
    repeat("shorter than 20 chars", 2)        # string, the same value twice
    scalar(20, pa.int32())                    # a compute function's argument
    from_values([1, None], pa.int64())        # small lists: numbers, strings, timestamps
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa


def from_numpy(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """A 1-d numeric or boolean numpy array as an Arrow array; `mask` True = null."""
    values = np.ascontiguousarray(values)
    n = len(values)
    validity = None if mask is None else _bits(~np.asarray(mask, bool))
    if values.dtype == np.bool_:
        return pa.Array.from_buffers(pa.bool_(), n, [validity, _bits(values)])
    arrow_type = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(arrow_type, n, [validity, pa.py_buffer(values)])


def repeat(value: Any, n: int, type: pa.DataType | None = None) -> pa.Array:
    """`value` `n` times (a string, a number, or None for nulls); `type` default string."""
    type = pa.string() if type is None else type
    if value is None:
        return pa.nulls(n, type)
    if pa.types.is_string(type):
        data = str(value).encode()
        offsets = np.arange(n + 1, dtype=np.int32) * len(data)
        if n and int(offsets[-1]) != len(data) * n:  # past int32: let the list path refuse
            return from_values([value] * n, type)
        return pa.Array.from_buffers(type, n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])
    return from_numpy(np.full(n, value, dtype=type.to_pandas_dtype()))


def scalar(value: Any, type: pa.DataType) -> pa.Scalar:
    """An Arrow scalar of `type` (for a compute function's argument: a plain Python value
    there goes through `pyarrow.scalar`, which imports pandas)."""
    return repeat(value, 1, type)[0]


def from_values(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    """A short list of Python values (None = null) as an Arrow array of `type`: integers,
    floats, strings, or `timestamp("us")` from naive datetimes."""
    n = len(values)
    nulls = np.fromiter((v is None for v in values), bool, n)
    mask = nulls if nulls.any() else None
    if pa.types.is_string(type):
        encoded = [b"" if v is None else str(v).encode() for v in values]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.fromiter((len(e) for e in encoded), np.int64, n), out=offsets[1:])
        if offsets[-1] >= 2**31:
            type = pa.large_string()
        else:
            offsets = offsets.astype(np.int32)
        validity = None if mask is None else _bits(~mask)
        data = pa.py_buffer(b"".join(encoded))
        return pa.Array.from_buffers(type, n, [validity, pa.py_buffer(offsets), data])
    if pa.types.is_timestamp(type):
        unit = type.unit
        stamps = np.array(
            [np.datetime64(0, unit) if v is None else _naive(v) for v in values],
            dtype=f"datetime64[{unit}]",
        ).astype(np.int64)
        return from_numpy(stamps, mask).view(type)
    dtype = type.to_pandas_dtype()
    filled = np.array([0 if v is None else v for v in values], dtype=dtype)
    return from_numpy(filled, mask)


def bools(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as a numpy bool array, nulls as False (`to_numpy` of a
    boolean array goes through pyarrow's pandas conversion)."""
    if isinstance(values, pa.ChunkedArray):
        parts = [bools(chunk) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, bool)
    n, offset = len(values), values.offset
    validity, data = values.buffers()[:2]
    if data is None or not n:
        return np.zeros(n, bool)
    bits = np.frombuffer(data, np.uint8)
    out = np.unpackbits(bits, bitorder="little", count=offset + n)[offset:].astype(bool)
    if validity is not None and values.null_count:
        valid = np.frombuffer(validity, np.uint8)
        out &= np.unpackbits(valid, bitorder="little", count=offset + n)[offset:].astype(bool)
    return out


def _naive(value: datetime) -> np.datetime64:
    if value.tzinfo is not None:
        raise ValueError("from_values takes naive datetimes (UTC)")
    return np.datetime64(value)


def _bits(values: np.ndarray) -> pa.Buffer:
    """A boolean numpy array as an Arrow bitmap (least significant bit first)."""
    return pa.py_buffer(np.packbits(np.asarray(values, bool), bitorder="little"))
