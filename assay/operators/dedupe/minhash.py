"""MinhashDedupe: near-duplicate removal with MinHash, LSH banding and exact Jaccard checks."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader
from assay.operators.dedupe.base import ClusterDedupe
from assay.operators.dedupe.buckets import candidate_pairs, unpack, write_band_keys
from assay.operators.dedupe.clusters import ClusterFit, best_matches, cluster_members
from assay.operators.dedupe.components import connected_components
from assay.operators.dedupe.jaccard import ShingleSets
from assay.operators.dedupe.lsh import choose_bands
from assay.operators.dedupe.normalize import Normalization
from assay.operators.dedupe.shingles import shingle_hashes
from assay.operators.dedupe.signatures import Permutations, band_keys, minhash_signatures

REASON = "near duplicate of {match} (jaccard {score})"


@dataclass
class _Spill:
    """The files pass 1 wrote, in write order (which is row order: never sort the names)."""

    folder: Path
    ids: list[pa.Array] = field(default_factory=list)
    rows: int = 0
    band_files: list[Path] = field(default_factory=list)
    shingle_files: list[tuple[Path, Path]] = field(default_factory=list)  # (hashes, offsets)


@register
class MinhashDedupe(ClusterDedupe):
    """Keep one row per cluster of near-duplicate texts (Jaccard of n-gram shingle sets).

    fit, one pass over the input: the text is normalised (`normalize`, by default lower
    case, NFKC, punctuation and symbols out: see `assay.operators.dedupe.normalize`), then
    shingles (word or character n-grams of the normalised text) -> MinHash
    signatures -> LSH band keys, spilled per batch to Parquet (with the 32-bit shingle
    hashes to .npy). Then, band by band, rows sharing a key become candidate pairs; the
    candidate rows' shingle sets are read back from the spill and each pair's exact Jaccard
    computed on the same normalised shingles; with `verify` pairs below `threshold` are
    dropped. Connected components
    (union-find) of the remaining pairs are the clusters; each keeps its first row in input
    order. Memory holds every row id (an Arrow string array, about 4 bytes plus the id's
    length a row) and a label per row (8 bytes), one batch, one band column (12 bytes a
    row), the candidate pairs and the candidate rows' shingle sets; never all signatures.
    `fit_stats` counts the candidate pairs and the edges kept.

    Bands: `bands` x `rows` defaults to `choose_bands(threshold, num_perm)`, the largest r
    with P(candidate | Jaccard = threshold) >= 0.97 (b=18, r=7 for 0.8 and 128 permutations;
    see `assay.operators.dedupe.lsh` and docs/dedupe.md for the S-curve).

    Input columns: `column` (string). Output columns: `cluster_column` (string: the id of the
    row kept for the cluster; the row's own id when it has no near duplicate).
    Rejects: "near duplicate of <id> (jaccard 0.86)" naming the row it matched best (a
    checked pair, so the Jaccard is >= `threshold` with `verify`); `cluster_id` names the
    kept row, which the removed row may reach only through other members of the cluster.

    Example: `MinhashDedupe(column="text", threshold=0.8, ngram=5)`; with numbers folded,
    `MinhashDedupe(normalize={"digits": True})`; in a recipe
    `{MinhashDedupe: {column: text, threshold: 0.8, normalize: datatrove}}`.
    """

    reason: ClassVar[str] = REASON

    column: str = "text"
    threshold: float = Field(0.8, gt=0.0, lt=1.0)
    ngram: int = Field(5, ge=1)  # word 5-grams: the common choice (datatrove, distilabel)
    unit: Literal["word", "char"] = "word"
    normalize: Normalization = "default"  # a preset name or TextNormalization fields
    num_perm: int = Field(128, ge=1, le=1024)  # 128: datasketch's and distilabel's default
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    verify: bool = True  # exact Jaccard on candidates: precision ~1 at small extra cost
    seed: int = 42
    spill_dir: str | None = None  # where band keys are spilled (default: the system temp dir)

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

    def find_clusters(self, read_input: BatchReader) -> ClusterFit:
        bands, rows = self.band_shape()
        perms = Permutations.make(bands * rows, self.seed)
        with tempfile.TemporaryDirectory(
            prefix="assay-minhash-", dir=self.spill_dir, ignore_cleanup_errors=True
        ) as folder:
            spill = self._spill(read_input, perms, bands, rows, Path(folder))
            ids, n = pa.chunked_array(spill.ids, pa.string()), spill.rows
            star, window = candidate_pairs(spill.band_files, bands)
            pairs = len(star) + len(window)
            if len(star) == 0:  # every shared bucket has a first row: no star, no pairs
                return ClusterFit(ids, np.empty(0, np.int64), np.empty(0, np.int64))
            sets = self._shingle_sets(spill, np.unique(np.concatenate(unpack(star))))
        edges, similarity = self._edges(n, sets, star, window)
        left, right = unpack(edges)
        members, keepers = cluster_members(connected_components(n, left, right))
        if not self.verify:
            similarity = sets.jaccard(left, right)
        matches, scores = best_matches(members, left, right, similarity)
        return ClusterFit(ids, members, keepers, matches, scores, pairs=pairs, edges=len(edges))

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

    def _spill(
        self, read_input: BatchReader, perms: Permutations, bands: int, rows: int, folder: Path
    ) -> _Spill:
        """Pass 1: per batch, spill band keys (Parquet) and 32-bit shingle hashes (.npy)."""
        spill = _Spill(folder)
        for b, batch in enumerate(read_input()):
            shingles = shingle_hashes(
                batch[self.column], self.ngram, self.unit, normalize=self.normalize
            )
            keys = band_keys(minhash_signatures(shingles, perms), bands, rows)
            has_shingles = shingles.counts() > 0  # empty texts are left to ExactDedupe
            positions = np.arange(spill.rows, spill.rows + batch.num_rows)[has_shingles]
            bands_file = folder / f"bands-{b}.parquet"
            hashes_file, offsets_file = folder / f"shingles-{b}.npy", folder / f"offsets-{b}.npy"
            write_band_keys(bands_file, positions, keys[has_shingles])
            np.save(hashes_file, shingles.hashes.astype(np.uint32))
            np.save(offsets_file, shingles.offsets)
            spill.band_files.append(bands_file)
            spill.shingle_files.append((hashes_file, offsets_file))
            spill.ids.extend(batch[ID].cast(pa.string()).chunks)
            spill.rows += batch.num_rows
        if spill.rows >= 2**32:
            raise ValueError("MinhashDedupe packs row positions in 32 bits: at most 4.29e9 rows")
        return spill

    def _shingle_sets(self, spill: _Spill, rows: np.ndarray) -> ShingleSets:
        """Pass 2, over the spilled shingles in write order: the candidate rows' sets only."""
        sets = ShingleSets(rows)
        first = 0
        for hashes_file, offsets_file in spill.shingle_files:
            offsets = np.load(offsets_file)
            lo, hi = np.searchsorted(rows, [first, first + len(offsets) - 1])
            if hi > lo:
                sets.add_batch(first, np.load(hashes_file), offsets)
            first += len(offsets) - 1
        sets.finish()
        return sets
