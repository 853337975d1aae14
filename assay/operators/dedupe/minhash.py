"""MinhashDedupe: near-duplicate removal with MinHash, LSH banding and exact Jaccard checks."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader, Outcome, Stage
from assay.operators.dedupe.buckets import candidate_pairs, unpack, write_band_keys
from assay.operators.dedupe.clusters import ClusterAssignment, best_matches, cluster_members
from assay.operators.dedupe.components import connected_components
from assay.operators.dedupe.jaccard import ShingleSets
from assay.operators.dedupe.lsh import choose_bands
from assay.operators.dedupe.shingles import shingle_hashes
from assay.operators.dedupe.signatures import Permutations, band_keys, minhash_signatures

REASON = "near duplicate of {match} (jaccard {score})"


@register
class MinhashDedupe(Stage):
    """Keep one row per cluster of near-duplicate texts (Jaccard of n-gram shingle sets).

    fit, one pass over the input: shingles (word or character n-grams) -> MinHash
    signatures -> LSH band keys, spilled per batch to Parquet (with the 32-bit shingle
    hashes to .npy). Then, band by band, rows sharing a key become candidate pairs; the
    candidate rows' shingle sets are read back from the spill and each pair's exact Jaccard
    computed; with `verify` pairs below `threshold` are dropped. Connected components
    (union-find) of the remaining pairs are the clusters; each keeps its first row in input
    order. Memory holds one batch, one band column and the candidate rows' shingle sets,
    never all signatures.

    Bands: `bands` x `rows` defaults to `choose_bands(threshold, num_perm)`, the largest r
    with P(candidate | Jaccard = threshold) >= 0.97 (b=18, r=7 for 0.8 and 128 permutations;
    see `assay.operators.dedupe.lsh` and docs/dedupe.md for the S-curve).

    Input columns: `column` (string). Output columns: `cluster_column` (string: the id of the
    row kept for the cluster; the row's own id when it has no near duplicate).
    Rejects: "near duplicate of <id> (jaccard 0.86)" naming the row it matched best (a
    checked pair, so the Jaccard is >= `threshold` with `verify`); `cluster_id` names the
    kept row, which the removed row may reach only through other members of the cluster.

    Example: `MinhashDedupe(column="text", threshold=0.8, ngram=5)`; in a recipe
    `{MinhashDedupe: {column: text, threshold: 0.8}}`.
    """

    needs_fit = True

    column: str = "text"
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    ngram: int = Field(5, ge=1)  # word 5-grams: the common choice (datatrove, distilabel)
    unit: Literal["word", "char"] = "word"
    num_perm: int = Field(128, ge=1, le=1024)  # 128: datasketch's and distilabel's default
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    verify: bool = True  # exact Jaccard on candidates: precision ~1 at small extra cost
    seed: int = 42
    spill_dir: str | None = None  # where band keys are spilled (default: the system temp dir)
    cluster_column: str = "cluster_id"

    _assignment: ClusterAssignment | None = None
    _stats: dict[str, int] = {}

    @model_validator(mode="after")
    def _check_bands(self) -> MinhashDedupe:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if (
            self.bands is not None
            and self.rows is not None
            and self.bands * self.rows > self.num_perm
        ):
            raise ValueError(
                f"bands x rows ({self.bands * self.rows}) exceeds num_perm ({self.num_perm})"
            )
        return self

    def input_columns(self) -> list[str]:
        return [self.column]

    def band_shape(self) -> tuple[int, int]:
        """(bands, rows) used: the given ones, or the ones chosen for `threshold`."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return choose_bands(self.threshold, self.num_perm)

    def fit(self, read_input: BatchReader) -> None:
        bands, rows = self.band_shape()
        perms = Permutations.make(bands * rows, self.seed)
        spill = Path(tempfile.mkdtemp(prefix="assay-minhash-", dir=self.spill_dir))
        try:
            ids, n = self._spill(read_input, perms, bands, rows, spill)
            star, window = candidate_pairs(sorted(spill.glob("bands-*.parquet")), bands)
            self._stats = {"rows": n, "candidate_pairs": len(star) + len(window)}
            if len(star) == 0:  # every shared bucket has a first row: no star, no pairs
                self._assignment = ClusterAssignment.empty(REASON)
                return
            touched = np.unique(np.concatenate(unpack(star)))
            sets = self._shingle_sets(spill, touched)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        edges, similarity = self._edges(n, sets, star, window)
        self._stats["edges"] = len(edges)
        if len(edges) == 0:
            self._assignment = ClusterAssignment.empty(REASON)
            return
        left, right = unpack(edges)
        members, keepers = cluster_members(connected_components(n, left, right))
        if not self.verify:
            similarity = sets.jaccard(left, right)
        matches, scores = best_matches(members, left, right, similarity)
        all_ids = pa.chunked_array(ids, pa.string())
        self._assignment = ClusterAssignment(
            all_ids.take(members), all_ids.take(keepers), REASON, scores, all_ids.take(matches)
        )
        self._stats["removed"] = int((members != keepers).sum())

    def _edges(
        self, n: int, sets: ShingleSets, star: np.ndarray, window: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Packed pairs kept as edges, with their Jaccard (NaN where not computed).

        With `verify`, star pairs are checked first; a window pair is checked only when its
        two rows are still in different clusters, which skips most pairs of big clusters.
        """
        if not self.verify:
            edges = np.union1d(star, window)
            return edges, np.full(len(edges), np.nan)
        star_j = sets.jaccard(*unpack(star))
        keep = star_j >= self.threshold
        labels = connected_components(n, *unpack(star[keep]))
        left, right = unpack(window)
        open_ = labels[left] != labels[right]
        window = window[open_]
        window_j = sets.jaccard(left[open_], right[open_])
        edges = np.concatenate([star[keep], window[window_j >= self.threshold]])
        similarity = np.concatenate([star_j[keep], window_j[window_j >= self.threshold]])
        return edges, similarity

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        assignment = self._assignment or ClusterAssignment.empty(REASON)
        return assignment.apply(self.name, table, self.cluster_column)

    def _spill(
        self, read_input: BatchReader, perms: Permutations, bands: int, rows: int, spill: Path
    ) -> tuple[list[pa.Array], int]:
        """Pass 1: per batch, spill band keys (Parquet) and 32-bit shingle hashes (.npy)."""
        ids: list[pa.Array] = []
        n = 0
        for b, batch in enumerate(read_input()):
            shingles = shingle_hashes(batch[self.column], self.ngram, self.unit)
            keys = band_keys(minhash_signatures(shingles, perms), bands, rows)
            has_shingles = shingles.counts() > 0  # empty texts are left to ExactDedupe
            positions = np.arange(n, n + batch.num_rows)[has_shingles]
            write_band_keys(spill / f"bands-{b:06d}.parquet", positions, keys[has_shingles])
            np.save(spill / f"shingles-{b:06d}.npy", shingles.hashes.astype(np.uint32))
            np.save(spill / f"offsets-{b:06d}.npy", shingles.offsets)
            ids.extend(batch[ID].cast(pa.string()).chunks)
            n += batch.num_rows
        if n >= 2**32:
            raise ValueError("MinhashDedupe packs row positions in 32 bits: at most 4.29e9 rows")
        return ids, n

    def _shingle_sets(self, spill: Path, rows: np.ndarray) -> ShingleSets:
        """Pass 2, over the spilled shingles: the sets of the candidate rows only."""
        sets = ShingleSets(rows)
        first = 0
        for path in sorted(spill.glob("offsets-*.npy")):
            offsets = np.load(path)
            lo, hi = np.searchsorted(rows, [first, first + len(offsets) - 1])
            if hi > lo:
                hashes = np.load(path.with_name(path.name.replace("offsets", "shingles")))
                sets.add_batch(first, hashes, offsets)
            first += len(offsets) - 1
        sets.finish()
        return sets
