"""SemanticDedupe: remove rows whose embedding is within a cosine threshold of an earlier row's."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field

from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader, Outcome, Stage
from assay.operators.dedupe.clusters import ClusterAssignment, best_matches, cluster_members
from assay.operators.dedupe.components import connected_components
from assay.operators.dedupe.embeddings import DEFAULT_MODEL, embed, unit_vectors

REASON = "semantic duplicate of {match} (cosine {score})"


@register
class SemanticDedupe(Stage):
    """Keep one row per cluster of texts whose embeddings have cosine >= `threshold`.

    fit embeds every row (a sentence-transformers model, all-MiniLM-L6-v2 by default, or a
    precomputed `embedding_column`), spills the unit vectors to a flat float32 file, then
    compares them block by block (`block_size` rows x `block_size` rows per matrix product,
    64 MB at 4096), so no n x n similarity matrix is ever held. Pairs above the threshold
    are joined by union-find; each cluster keeps its first row in input order.

    Input columns: `column` (string), or `embedding_column` (list of floats).
    Output columns: `cluster_column` (string: id of the row kept for the cluster).
    Rejects: "semantic duplicate of <id> (cosine 0.97)" naming the most similar row it was
    matched with (`cluster_id` is the kept row; in a chain they can differ).

    Example: `SemanticDedupe(column="prompt", threshold=0.92)`; in a recipe
    `{SemanticDedupe: {column: prompt, threshold: 0.92}}`.
    """

    needs_fit = True

    column: str = "text"
    # 0.9 on MiniLM: paraphrases and templated near-copies, not mere topic overlap
    threshold: float = Field(0.9, gt=-1.0, le=1.0)
    model: str = DEFAULT_MODEL
    embedding_column: str | None = None
    device: str = "cpu"
    encode_batch_size: int = Field(64, ge=1)
    block_size: int = Field(4096, ge=1)
    spill_dir: str | None = None
    cluster_column: str = "cluster_id"

    _assignment: ClusterAssignment | None = None

    def input_columns(self) -> list[str]:
        return [self.embedding_column or self.column]

    def vectors(self, table: pa.Table) -> np.ndarray:
        """(rows, dim) unit vectors of a batch."""
        if self.embedding_column:
            return unit_vectors(table[self.embedding_column])
        return embed(table[self.column], self.model, self.device, self.encode_batch_size)

    def fit(self, read_input: BatchReader) -> None:
        spill = Path(tempfile.mkdtemp(prefix="assay-semantic-", dir=self.spill_dir))
        try:
            path = spill / "vectors.f32"
            ids: list[pa.Array] = []
            n, dim = 0, 0
            with path.open("wb") as out:
                for batch in read_input():
                    vectors = self.vectors(batch)
                    dim = vectors.shape[1] if len(vectors) else dim
                    out.write(np.ascontiguousarray(vectors, np.float32).tobytes())
                    ids.extend(batch[ID].cast(pa.string()).chunks)
                    n += batch.num_rows
            if n == 0 or dim == 0:
                self._assignment = ClusterAssignment.empty(REASON)
                return
            vectors = np.memmap(path, np.float32, mode="r", shape=(n, dim))
            left, right, cosine = self._similar_pairs(vectors)
            del vectors
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        if len(left) == 0:
            self._assignment = ClusterAssignment.empty(REASON)
            return
        members, keepers = cluster_members(connected_components(n, left, right))
        matches, scores = best_matches(members, left, right, cosine)
        all_ids = pa.chunked_array(ids, pa.string())
        self._assignment = ClusterAssignment(
            all_ids.take(members), all_ids.take(keepers), REASON, scores, all_ids.take(matches)
        )

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        assignment = self._assignment or ClusterAssignment.empty(REASON)
        return assignment.apply(self.name, table, self.cluster_column)

    def _similar_pairs(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(earlier, later, cosine) of row pairs with cosine >= threshold, block by block."""
        n, size = len(vectors), self.block_size
        left: list[np.ndarray] = []
        right: list[np.ndarray] = []
        cosine: list[np.ndarray] = []
        for i0 in range(0, n, size):
            rows = np.array(vectors[i0 : i0 + size])
            for j0 in range(0, i0 + 1, size):
                cols = rows if j0 == i0 else np.array(vectors[j0 : j0 + size])
                sim = rows @ cols.T
                hit = sim >= self.threshold
                if j0 == i0:
                    hit &= np.tri(len(rows), len(cols), k=-1, dtype=bool)  # col < row only
                r, c = np.nonzero(hit)
                left.append(c + j0)
                right.append(r + i0)
                cosine.append(sim[r, c].astype(np.float64))
        return np.concatenate(left), np.concatenate(right), np.concatenate(cosine)
