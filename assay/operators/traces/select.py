"""Which correct traces of a problem to keep: the shortest, all, or one per distinct approach.

`distinct` collapses near-duplicate traces with the MinHash dedupe's building blocks: word
n-gram shingles of the normalised reasoning (`dedupe.shingles`), the exact Jaccard of every
pair within a problem (a problem has a handful of samples, so no LSH is needed), and
connected components (`dedupe.components`); each component keeps its shortest trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from assay.operators.dedupe.components import connected_components
from assay.operators.dedupe.shingles import shingle_hashes

KeepPolicy = Literal["shortest", "all", "distinct"]


@dataclass
class Drop:
    """A correct sample that is not kept, and why."""

    index: int
    reason: str


def select_traces(
    groups: dict[str, list[int]],
    reasoning: list[str],
    ids: list[str],
    keep: KeepPolicy,
    threshold: float = 0.7,
    ngram: int = 3,
) -> list[Drop]:
    """The correct samples to drop; `groups` maps a problem to its correct samples' indexes.

    Lengths are compared in characters of the reasoning; ties keep the earlier sample.
    """
    if keep == "all":
        return []
    drops: list[Drop] = []
    if keep == "shortest":
        for members in groups.values():
            best = min(members, key=lambda i: (len(reasoning[i]), i))
            drops += [
                Drop(i, f"longer than the shortest correct trace ({ids[best]})")
                for i in members
                if i != best
            ]
        return drops
    if keep != "distinct":
        raise ValueError(f"unknown keep policy {keep!r}; use shortest, all or distinct")
    sets = _shingle_sets(reasoning, ngram)
    for members in groups.values():
        drops += _distinct(members, sets, reasoning, ids, threshold)
    return drops


def _shingle_sets(texts: list[str], ngram: int) -> list[np.ndarray]:
    sh = shingle_hashes(pa.array(texts, pa.string()), n=ngram, unit="word", normalize="default")
    return [np.unique(sh.hashes[sh.offsets[d] : sh.offsets[d + 1]]) for d in range(sh.n_docs)]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted, unique shingle-hash arrays (1.0 for two empty ones)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def _distinct(
    members: list[int],
    sets: list[np.ndarray],
    reasoning: list[str],
    ids: list[str],
    threshold: float,
) -> list[Drop]:
    order = sorted(members, key=lambda i: (len(reasoning[i]), i))  # shortest first
    left, right, scores = [], [], {}
    for x in range(len(order)):
        for y in range(x + 1, len(order)):
            score = jaccard(sets[order[x]], sets[order[y]])
            if score >= threshold:
                left.append(x)
                right.append(y)
                scores[(x, y)] = score
    if not left:
        return []
    labels = connected_components(len(order), np.array(left), np.array(right))
    drops = []
    kept_of: dict[int, int] = {}
    for x, label in enumerate(labels.tolist()):
        if label not in kept_of:
            kept_of[label] = x  # the shortest member of the component (order is by length)
            continue
        keeper = kept_of[label]
        score = scores.get((keeper, x))
        detail = f"jaccard {score:.2f}" if score is not None else "same cluster"
        drops.append(Drop(order[x], f"near duplicate of {ids[order[keeper]]} ({detail})"))
    return drops
