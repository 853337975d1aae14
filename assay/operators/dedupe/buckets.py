"""Candidate pairs from LSH band keys spilled to Parquet, one band at a time.

Each fit batch writes one Parquet file with a `row` column (global row position) and one
uint64 column per band (`b000`, `b001`, ...). `candidate_pairs` reads a single band column
across all files (a few bytes per row), sorts it, and pairs rows that share a key: every
row with its bucket's first row (a star, enough for connectivity) and with its next
`window` neighbours (so exact verification still finds links when a bucket mixes two
clusters). Pairs are packed as `low << 32 | high` and deduplicated across bands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

_WINDOW = 3


def band_column(k: int) -> str:
    return f"b{k:03d}"


def write_band_keys(path: Path, rows: np.ndarray, keys: np.ndarray) -> None:
    """Spill one batch's band keys: `rows` (n,) global positions, `keys` (n, bands) uint64."""
    columns = {"row": pa.array(rows.astype(np.uint32))}
    for k in range(keys.shape[1]):
        columns[band_column(k)] = pa.array(keys[:, k])
    pq.write_table(pa.table(columns), path, compression="none")


def candidate_pairs(files: list[Path], bands: int) -> np.ndarray:
    """Unique packed pairs (uint64, `low << 32 | high`) of rows sharing a band key."""
    if not files:
        return np.empty(0, np.uint64)
    dataset = pads.dataset([str(f) for f in files], format="parquet")
    found: list[np.ndarray] = []
    for k in range(bands):
        table = dataset.to_table(columns=["row", band_column(k)])
        found.append(_pairs_in_band(table["row"].to_numpy(), table[band_column(k)].to_numpy()))
        if sum(len(f) for f in found) > 20_000_000:  # keep the pair list compact
            found = [np.unique(np.concatenate(found))]
    return np.unique(np.concatenate(found)) if found else np.empty(0, np.uint64)


def unpack(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(
        np.int64
    )


def _pairs_in_band(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    order = np.argsort(keys, kind="stable")  # rows were written ascending: stay ascending
    keys, rows = keys[order], rows[order].astype(np.uint64)
    same = keys[1:] == keys[:-1]
    if not same.any():
        return np.empty(0, np.uint64)
    shared = np.zeros(len(keys), bool)
    shared[1:] |= same
    shared[:-1] |= same
    keys, rows = keys[shared], rows[shared]
    starts = np.r_[True, keys[1:] != keys[:-1]]
    first = rows[starts][np.cumsum(starts) - 1]
    out = [(first[~starts] << np.uint64(32)) | rows[~starts]]
    for d in range(1, _WINDOW + 1):
        ok = keys[d:] == keys[:-d]
        out.append((rows[:-d][ok] << np.uint64(32)) | rows[d:][ok])
    return np.concatenate(out)
