"""ShingleSets: the shingle sets of chosen rows, and exact Jaccard for many pairs at once.

Sets are stored as sorted 32-bit shingle hashes (the low half of the 64-bit shingle hash;
two different shingles of one pair collide with probability about |A||B| / 2^32, under
1e-4 for two 600-word texts), in one flat array with offsets. `jaccard(left, right)` counts
each pair's intersection by sorting `pair << 32 | shingle` keys: equal neighbours are
shared shingles. Work is chunked to a few million keys, so memory stays bounded.
"""

from __future__ import annotations

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_KEYS_PER_CHUNK = 4_000_000


class ShingleSets:
    """Shingle sets of rows with global positions `rows` (sorted), added batch by batch."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, np.int64)
        self._values: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self.values = np.empty(0, np.uint32)
        self.offsets = np.zeros(1, np.int64)

    def add_batch(self, first_row: int, hashes: np.ndarray, offsets: np.ndarray) -> None:
        """Keep the sets of this batch's rows that are in `rows`.

        The batch starts at global row `first_row`; `hashes[offsets[d]:offsets[d + 1]]` are
        its document d's shingle hashes (any unsigned dtype; the low 32 bits are kept).
        """
        n_docs = len(offsets) - 1
        lo = np.searchsorted(self.rows, first_row)
        hi = np.searchsorted(self.rows, first_row + n_docs)
        docs = self.rows[lo:hi] - first_row
        if len(docs) == 0:
            return
        counts = np.diff(offsets)
        take = _segments(offsets[docs], counts[docs])
        local = np.repeat(np.arange(len(docs), dtype=np.uint64), counts[docs])
        keys = (local << np.uint64(32)) | (hashes[take].astype(np.uint64) & _MASK32)
        keys.sort()
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
        self._values.append((keys & _MASK32).astype(np.uint32))
        self._counts.append(
            np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=len(docs))
        )

    def finish(self) -> None:
        """Concatenate what the batches added (call once, after the last batch)."""
        if self._values:
            self.values = np.concatenate(self._values)
            counts = np.concatenate(self._counts)
            self.offsets = np.zeros(len(counts) + 1, np.int64)
            np.cumsum(counts, out=self.offsets[1:])
        self._values, self._counts = [], []

    def index_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.rows, rows)

    def jaccard(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Exact Jaccard (float64) of the sets of global rows `left[i]` and `right[i]`."""
        ia, ib = self.index_of(left), self.index_of(right)
        sizes_a = np.diff(self.offsets)[ia]
        sizes_b = np.diff(self.offsets)[ib]
        out = np.zeros(len(ia), np.float64)
        cum = np.cumsum(sizes_a + sizes_b)
        cuts = np.searchsorted(cum, np.arange(0, cum[-1] if len(cum) else 0, _KEYS_PER_CHUNK))
        cuts = np.append(np.unique(cuts), len(ia))
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            if hi <= lo:
                continue
            out[lo:hi] = self._jaccard_chunk(ia[lo:hi], ib[lo:hi])
        return out

    def _jaccard_chunk(self, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
        n = len(ia)
        sizes_a = np.diff(self.offsets)[ia]
        sizes_b = np.diff(self.offsets)[ib]
        pair = np.arange(n, dtype=np.uint64)
        keys = np.concatenate(
            [
                (np.repeat(pair, sizes_a) << np.uint64(32))
                | self.values[_segments(self.offsets[ia], sizes_a)],
                (np.repeat(pair, sizes_b) << np.uint64(32))
                | self.values[_segments(self.offsets[ib], sizes_b)],
            ]
        )
        keys.sort()
        shared = keys[1:][keys[1:] == keys[:-1]] >> np.uint64(32)
        inter = np.bincount(shared.astype(np.int64), minlength=n)
        union = sizes_a + sizes_b - inter
        return np.divide(inter, union, out=np.zeros(n, np.float64), where=union > 0)


def _segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges [starts[i], starts[i] + lengths[i])."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)
