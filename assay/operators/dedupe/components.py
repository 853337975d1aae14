"""Connected components of a graph given as edge arrays, with numpy only.

Each component is labelled with its smallest node, so "keep the first row of each cluster"
is `labels == arange(n)`. The algorithm is vectorised union-find: hook every edge's larger
label onto its smaller one, then compress paths by pointer jumping, until no edge joins two
labels. Each round is a few array passes over the edges; the number of rounds grows with
the log of the longest chain, not with the number of nodes.

    labels = connected_components(5, np.array([0, 3]), np.array([2, 4]))
    # -> [0, 1, 0, 3, 3]

`join` adds edges to an existing labelling, a block at a time, and says which of them
joined two components: a caller that keeps only those holds a spanning forest (at most
n - 1 edges, whatever the number of similar pairs).
"""

from __future__ import annotations

import numpy as np


def connected_components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Label of each of `n` nodes: the smallest node of its component (int64)."""
    labels = np.arange(n, dtype=np.int64)
    left = np.asarray(left, np.int64)
    right = np.asarray(right, np.int64)
    if len(left) == 0:
        return labels
    while True:
        a, b = labels[left], labels[right]
        differ = a != b
        if not differ.any():
            return labels
        a, b = a[differ], b[differ]
        low, high = np.minimum(a, b), np.maximum(a, b)
        np.minimum.at(labels, high, low)  # hook: a root takes the smallest label offered
        _compress(labels)
        left, right = left[differ], right[differ]


def join(labels: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Merge the components of edges `left[i] - right[i]` into `labels`, in place.

    `labels` is a labelling as `connected_components` returns it (each node points at the
    smallest node of its component); it stays one. Returns the indices of the edges that
    joined two different components, in increasing order: together they form a spanning
    forest of the new connections, so over any sequence of calls at most n - 1 edges are
    returned. Each round hooks every root that an edge leaves from onto the smallest root
    that edge offers (one edge per root, so the hooks form no cycle), then compresses.
    """
    left = np.asarray(left, np.int64)
    right = np.asarray(right, np.int64)
    index = np.arange(len(left))
    kept: list[np.ndarray] = []
    while len(index):
        a, b = labels[left], labels[right]
        differ = a != b
        index, left, right = index[differ], left[differ], right[differ]
        a, b = a[differ], b[differ]
        if not len(index):
            break
        low, high = np.minimum(a, b), np.maximum(a, b)
        order = np.lexsort((low, high))  # by root, then the smallest root it is offered
        first = order[np.r_[True, high[order][1:] != high[order][:-1]]]
        labels[high[first]] = low[first]
        kept.append(index[first])
        _compress(labels)
    return np.sort(np.concatenate(kept)) if kept else np.empty(0, np.int64)


def _compress(labels: np.ndarray) -> None:
    """Pointer jumping: every node points at its root."""
    while True:
        parent = labels[labels]
        if np.array_equal(parent, labels):
            return
        labels[:] = parent
