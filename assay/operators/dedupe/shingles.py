"""Shingling: every n-gram of a text column as a 64-bit hash, without a per-row loop.

Tokens come from polars string kernels: with a `normalize` setting (see `normalize.py`) the
words of the normalised text, or its characters after whitespace runs collapse to one space;
without one (`normalize=None`, Decontaminate's rule) lower-cased `\\w+` runs. Token hashes
come from polars' vectorised hash, and
n-gram hashes from a rolling polynomial over the token hashes in numpy: n array passes,
whatever the number of documents. A document shorter than n tokens gives one shingle of all
its tokens (so two short texts can still match); an empty document gives none.

    sh = shingle_hashes(table["text"], n=5, unit="word", normalize="default")
    sh.hashes[sh.offsets[3] : sh.offsets[4]]  # the shingles of row 3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

from assay.operators.dedupe.normalize import Normalization, normalized, words

Unit = Literal["word", "char"]

_P = np.uint64(0x100000001B3)  # FNV-64 prime: an odd multiplier for the rolling hash
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser constants
_M2 = np.uint64(0x94D049BB133111EB)


@dataclass
class Shingles:
    """The shingles of a batch of documents, document by document (CSR layout).

    `hashes[offsets[d]:offsets[d + 1]]` are document d's shingles, in text order (with
    repeats). `tokens` is the token list per document (a polars list<string> Series), kept
    for explaining a match.
    """

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, one more than the number of documents
    tokens: pl.Series

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc_of(self) -> np.ndarray:
        """The document index of every shingle."""
        return np.repeat(np.arange(self.n_docs, dtype=np.int64), self.counts())


def tokenize(
    column: pa.Array | pa.ChunkedArray, unit: Unit = "word", normalize: Normalization | None = None
) -> pl.Series:
    """Tokens of each text (list<string>): words or characters of the `normalize`d text;
    with None, lower-cased `\\w+` words or characters (nulls give no tokens)."""
    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', not {unit!r}")
    text = pl.Series(column).cast(pl.String).fill_null("")
    if normalize is not None and unit == "word":
        return words(text, normalize)
    text = text.str.to_lowercase() if normalize is None else normalized(text, normalize)
    if unit == "word":
        return text.str.extract_all(r"\w+")
    return text.str.replace_all(r"\s+", " ").str.strip_chars().str.split("")


def shingle_hashes(
    column: pa.Array | pa.ChunkedArray,
    n: int,
    unit: Unit = "word",
    short_texts: bool = True,
    normalize: Normalization | None = None,
) -> Shingles:
    """Hash every n-token window of every text in `column` (see the module docstring).

    With `short_texts=False` a text shorter than n tokens gives no shingle at all.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    tokens = tokenize(column, unit, normalize)
    lengths = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    # flat tokens in document order, hashed in polars (no round trip through Arrow)
    flat = tokens.explode().drop_nulls()
    token_hash = flat.hash(seed=0x5EED).to_numpy().astype(np.uint64, copy=False)
    total = len(token_hash)
    starts = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])

    per_doc = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, int(short_texts)))
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(per_doc, out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.uint64)
    long_slot = np.repeat(lengths >= n, per_doc)

    with np.errstate(over="ignore"):
        if total >= n and long_slot.any():
            m = total - n + 1
            rolled = token_hash[:m].copy()
            for j in range(1, n):
                rolled *= _P
                rolled += token_hash[j : j + m]
            # a window is valid unless it starts in the last n-1 tokens of its text (a
            # position that lands in an earlier text is in that text's last n-1 as well)
            valid = np.ones(m, bool)
            ends = starts + lengths
            for k in range(1, n):
                at = ends - k
                valid[at[(at >= 0) & (at < m)]] = False
            out[long_slot] = rolled[valid]
        short = (lengths > 0) & (lengths < n)
        if short_texts and short.any():
            # polynomial over all tokens of a short text: sum of t_j * P^(L-1-j)
            take = np.repeat(short, lengths)
            doc = np.repeat(np.arange(len(lengths)), lengths)[take]
            pos = (np.arange(total, dtype=np.int64) - np.repeat(starts, lengths))[take]
            power = _powers(n)[lengths[doc] - 1 - pos]
            terms = token_hash[take] * power
            seg = np.zeros(int(short.sum()), np.int64)
            np.cumsum(lengths[short][:-1], out=seg[1:])
            out[~long_slot] = np.add.reduceat(terms, seg)
    return Shingles(hashes=_mix(out), offsets=offsets, tokens=tokens)


def _powers(n: int) -> np.ndarray:
    powers = np.ones(max(n, 1), np.uint64)
    with np.errstate(over="ignore"):
        for i in range(1, len(powers)):
            powers[i] = powers[i - 1] * _P
    return powers


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the rolling hash's bits before MinHash uses them."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x
