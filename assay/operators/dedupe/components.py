"""Connected components of a graph given as edge arrays, with numpy only.

Each component is labelled with its smallest node, so "keep the first row of each cluster"
is `labels == arange(n)`. The algorithm is vectorised union-find: hook every edge's larger
label onto its smaller one, then compress paths by pointer jumping, until no edge joins two
labels. Each round is a few array passes over the edges; the number of rounds grows with
the log of the longest chain, not with the number of nodes.

    labels = connected_components(5, np.array([0, 3]), np.array([2, 4]))
    # -> [0, 1, 0, 3, 3]
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


def _compress(labels: np.ndarray) -> None:
    """Pointer jumping: every node points at its root."""
    while True:
        parent = labels[labels]
        if np.array_equal(parent, labels):
            return
        labels[:] = parent
