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


def candidate_pairs(files: list[Path], bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique packed pairs (uint64, `low << 32 | high`) of rows sharing a band key.

    Returns (star pairs, other window pairs): a caller verifying pairs can check the star
    pairs first and then only the window pairs that still join two different clusters.
    """
    empty = np.empty(0, np.uint64)
    if not files:
        return empty, empty
    import pyarrow.dataset as pads  # here, not at import: pyarrow.dataset imports pandas

    dataset = pads.dataset([str(f) for f in files], format="parquet")
    stars: list[np.ndarray] = []
    windows: list[np.ndarray] = []
    for k in range(bands):
        table = dataset.to_table(columns=["row", band_column(k)])
        star, window = _pairs_in_band(table["row"].to_numpy(), table[band_column(k)].to_numpy())
        stars.append(star)
        windows.append(window)
        if sum(len(f) for f in stars + windows) > 20_000_000:  # keep the lists compact
            stars, windows = (
                [np.unique(np.concatenate(stars))],
                [np.unique(np.concatenate(windows))],
            )
    star = np.unique(np.concatenate(stars)) if stars else empty
    window = np.unique(np.concatenate(windows)) if windows else empty
    return star, np.setdiff1d(window, star, assume_unique=True)


def unpack(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(
        np.int64
    )


def _pairs_in_band(rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    empty = np.empty(0, np.uint64)
    order = np.argsort(keys, kind="stable")  # rows were written ascending: stay ascending
    keys, rows = keys[order], rows[order].astype(np.uint64)
    same = keys[1:] == keys[:-1]
    if not same.any():
        return empty, empty
    shared = np.zeros(len(keys), bool)
    shared[1:] |= same
    shared[:-1] |= same
    keys, rows = keys[shared], rows[shared]
    starts = np.r_[True, keys[1:] != keys[:-1]]
    first = rows[starts][np.cumsum(starts) - 1]
    star = (first[~starts] << np.uint64(32)) | rows[~starts]
    window = []
    for d in range(1, _WINDOW + 1):
        ok = keys[d:] == keys[:-d]
        window.append((rows[:-d][ok] << np.uint64(32)) | rows[d:][ok])
    return star, np.concatenate(window)
