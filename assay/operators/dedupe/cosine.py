"""Cosine clusters of unit vectors by blocked matrix products, in memory linear in the rows.

`cosine_clusters(vectors, threshold, block_size)` compares every pair of rows, one block x
block matrix product at a time (the lower triangle only), and keeps, whatever the number
of similar pairs, three arrays of one value per row:

- union-find labels: a block's pairs above the threshold are joined into the labels, and
  only the pairs that join two different clusters count as edges (at most n - 1 in all);
- each row's best match: the most similar row above the threshold, ties to the earlier
  row, for the reason a removed row is given.

So 100,000 copies of one text (5e9 similar pairs) need the same memory as 100,000
distinct texts: the vectors are read from a memmap, and a block's pairs exist only while
that block is being processed.

    found = cosine_clusters(np.eye(3, dtype=np.float32)[[0, 1, 0]], 0.9, 4096)
    found.labels  # [0, 1, 0]; found.match[2] == 0, found.score[2] == 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assay.operators.dedupe.components import join

# A block lists its similar pairs when it has at most this many (two int64 positions and a
# float32 each: 20 MB); a denser one is reduced with whole-block mask operations instead.
LIST_LIMIT = 1 << 20


@dataclass
class CosineClusters:
    """`labels[i]`: the first row of row i's cluster. `match[i]`, `score[i]`: row i's most
    similar row with cosine >= threshold and that cosine (-1 and -inf when it has none).
    `pairs`: similar pairs found; `edges`: pairs that joined two clusters."""

    labels: np.ndarray
    match: np.ndarray
    score: np.ndarray
    pairs: int = 0
    edges: int = 0


def cosine_clusters(
    vectors: np.ndarray, threshold: float, block_size: int, list_limit: int = LIST_LIMIT
) -> CosineClusters:
    """Clusters of rows of `vectors` (n, dim) unit vectors with cosine >= `threshold`.

    A block with at most `list_limit` similar pairs lists them (fast when pairs are rare,
    the usual case); a denser block is reduced without listing its pairs.
    """
    n = len(vectors)
    found = CosineClusters(
        labels=np.arange(n, dtype=np.int64),
        match=np.full(n, -1, np.int64),
        score=np.full(n, -np.inf, np.float32),
    )
    for i0 in range(0, n, block_size):
        rows = np.array(vectors[i0 : i0 + block_size])
        for j0 in range(0, i0 + 1, block_size):
            cols = rows if j0 == i0 else np.array(vectors[j0 : j0 + block_size])
            sim = rows @ cols.T
            hit = sim >= threshold
            if j0 == i0:
                hit &= np.tri(len(rows), len(cols), k=-1, dtype=bool)  # col < row only
            count = int(np.count_nonzero(hit))
            if count == 0:
                continue
            found.pairs += count
            if count <= list_limit:
                _listed_block(found, sim, hit, i0, j0)
            else:
                _dense_block(found, sim, hit, i0, j0)
    return found


def _listed_block(
    found: CosineClusters, sim: np.ndarray, hit: np.ndarray, i0: int, j0: int
) -> None:
    r, c = np.nonzero(hit)
    score = sim[r, c]
    r += i0
    c += j0
    found.edges += len(join(found.labels, c, r))
    for rows, other in ((r, c), (c, r)):
        order = np.lexsort((other, -score, rows))  # per row: best score, then earliest
        first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
        _offer(found, rows[first], other[first], score[first])


def _dense_block(found: CosineClusters, sim: np.ndarray, hit: np.ndarray, i0: int, j0: int) -> None:
    found.edges += _join_block(found.labels, hit, i0, j0)
    np.copyto(sim, -np.inf, where=~hit)
    row_at, col_at = np.arange(i0, i0 + sim.shape[0]), np.arange(j0, j0 + sim.shape[1])
    best_col = sim.argmax(axis=1)  # first maximum: ties go to the earlier row
    _offer(found, row_at, col_at[best_col], sim[np.arange(len(row_at)), best_col])
    best_row = sim.argmax(axis=0)
    _offer(found, col_at, row_at[best_row], sim[best_row, np.arange(len(col_at))])


def _join_block(labels: np.ndarray, hit: np.ndarray, i0: int, j0: int) -> int:
    """Join a block's similar pairs into `labels`; return how many joined two clusters.

    Never lists the block's pairs: each round joins every row and every column that still
    has a pair across two clusters to the first such partner, so the clusters touched at
    least halve per round, and a round is a few passes over the block's boolean mask.
    """
    row_at = np.arange(i0, i0 + hit.shape[0])
    col_at = np.arange(j0, j0 + hit.shape[1])
    joined = 0
    while True:
        cross = hit & (labels[row_at][:, None] != labels[col_at][None, :])
        rows = np.flatnonzero(cross.any(axis=1))
        if len(rows) == 0:
            return joined
        cols = np.flatnonzero(cross.any(axis=0))
        left = np.concatenate([row_at[rows], row_at[cross[:, cols].argmax(axis=0)]])
        right = np.concatenate([col_at[cross[rows].argmax(axis=1)], col_at[cols]])
        joined += len(join(labels, left, right))


def _offer(found: CosineClusters, rows: np.ndarray, other: np.ndarray, score: np.ndarray) -> None:
    """Make `other[i]` the best match of `rows[i]` where it beats the current one."""
    current = found.score[rows]
    better = (score > current) | ((score == current) & (other < found.match[rows]))
    better &= score > -np.inf
    found.score[rows[better]] = score[better]
    found.match[rows[better]] = other[better]
