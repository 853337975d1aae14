"""MinHash signatures and LSH band keys, vectorised with numpy.

Permutation i maps a 64-bit shingle hash x to `a_i * x + b_i (mod 2^64)` with `a_i` odd (a
bijection of the 64-bit space, multiply-add hashing); the signature keeps the top 32 bits of
the minimum per document. Taking the top bits after the minimum equals the minimum of the
top bits, so the per-shingle work is one multiply, one add and one minimum: the loop runs
over permutations (up to a few hundred), never over shingles or documents.

    perms = Permutations.make(128, seed=42)
    sig = minhash_signatures(shingle_hashes(table["text"], 5), perms)  # (rows, 128) uint32
    keys = band_keys(sig, bands=18, rows=7)  # (rows, 18) uint64
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assay.operators.dedupe.shingles import Shingles

EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document without shingles
# Shingles hashed per numpy call: 64k uint64 values (512 KB) stay in the L2 cache.
_CHUNK = 1 << 16
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class Permutations:
    """The multiply-add coefficients of `n` hash permutations (seeded, reproducible)."""

    a: np.ndarray  # uint64, odd
    b: np.ndarray  # uint64

    @classmethod
    def make(cls, n: int, seed: int) -> Permutations:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False) | np.uint64(1)
        b = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
        return cls(a, b)

    def __len__(self) -> int:
        return len(self.a)


def minhash_signatures(shingles: Shingles, perms: Permutations) -> np.ndarray:
    """(documents, permutations) uint32 signatures; a document without shingles gets EMPTY."""
    counts = shingles.counts()
    sig = np.full((shingles.n_docs, len(perms)), EMPTY, np.uint32)
    nonempty = np.flatnonzero(counts > 0)
    if len(nonempty) == 0:
        return sig
    starts = shingles.offsets[nonempty]
    # groups of whole documents holding about _CHUNK shingles each
    cuts = np.unique(np.searchsorted(starts, np.arange(0, shingles.offsets[-1], _CHUNK)))
    cuts = np.append(cuts, len(nonempty))
    value = np.empty(max(_CHUNK, int(counts.max())) * 2, np.uint64)
    with np.errstate(over="ignore"):
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            first = starts[lo]
            last = shingles.offsets[nonempty[hi - 1] + 1]
            x = shingles.hashes[first:last]
            local = starts[lo:hi] - first
            v = value[: len(x)]
            rows = nonempty[lo:hi]
            for i in range(len(perms)):
                np.multiply(x, perms.a[i], out=v)
                v += perms.b[i]
                sig[rows, i] = np.minimum.reduceat(v, local) >> np.uint64(32)
    return sig


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(documents, bands) uint64: an FNV-1a style hash of each band's `rows` values."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} permutations")
    cut = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.full((len(signatures), bands), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys ^= cut[:, :, j]
            keys *= _FNV_PRIME
    return keys
