"""SemanticDedupe: remove rows whose embedding is within a cosine threshold of an earlier row's."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from assay.curate.errors import StageError
from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader
from assay.operators.dedupe.base import ClusterDedupe
from assay.operators.dedupe.clusters import ClusterFit, cluster_members
from assay.operators.dedupe.cosine import cosine_clusters
from assay.operators.dedupe.embeddings import DEFAULT_MODEL, EmbeddingError, embed, unit_vectors

REASON = "semantic duplicate of {match} (cosine {score})"


@register
class SemanticDedupe(ClusterDedupe):
    """Keep one row per cluster of texts whose embeddings have cosine >= `threshold`.

    fit embeds every row (a sentence-transformers model, all-MiniLM-L6-v2 by default, or a
    precomputed `embedding_column`), spills the unit vectors to a flat float32 file, then
    compares them block by block (`block_size` rows x `block_size` rows per matrix product,
    64 MB at 4096), so no n x n similarity matrix is ever held. Pairs above the threshold
    are joined block by block into union-find labels and never stored: memory is the
    vectors' memmap, one block, and a few arrays of one value per row (labels, each row's
    best match, every row id), however many rows are similar (see `cosine`). Each cluster
    keeps its first row in input order. `fit_stats` counts the pairs and the edges kept.

    Input columns: `column` (string), or `embedding_column` (list of floats, every row
    the same length: a null, ragged or non-finite vector is a StageError naming the row).
    Output columns: `cluster_column` (string: id of the row kept for the cluster).
    Rejects: "semantic duplicate of <id> (cosine 0.97)" naming the most similar row it was
    matched with (`cluster_id` is the kept row; in a chain they can differ).

    Example: `SemanticDedupe(column="prompt", threshold=0.92)`; in a recipe
    `{SemanticDedupe: {column: prompt, threshold: 0.92}}`.
    """

    reason: ClassVar[str] = REASON

    column: str = "text"
    # 0.9 on MiniLM: paraphrases and templated near-copies, not mere topic overlap
    threshold: float = Field(0.9, gt=-1.0, le=1.0)
    model: str = DEFAULT_MODEL
    embedding_column: str | None = None
    device: str = "cpu"
    encode_batch_size: int = Field(64, ge=1)
    block_size: int = Field(4096, ge=1)
    spill_dir: str | None = None

    def input_columns(self) -> list[str]:
        return [self.embedding_column or self.column]

    def vectors(self, table: pa.Table, dim: int | None = None) -> np.ndarray:
        """(rows, dim) unit vectors of a batch; `dim`: the dimension earlier batches had."""
        if not self.embedding_column:
            return embed(table[self.column], self.model, self.device, self.encode_batch_size)
        try:
            return unit_vectors(table[self.embedding_column], dim)
        except EmbeddingError as exc:
            raise StageError(
                self.name,
                str(exc),
                column=self.embedding_column,
                row_id=str(table[ID][exc.row].as_py()),
            ) from exc

    def find_clusters(self, read_input: BatchReader) -> ClusterFit:
        with tempfile.TemporaryDirectory(
            prefix="assay-semantic-", dir=self.spill_dir, ignore_cleanup_errors=True
        ) as spill:
            path = Path(spill) / "vectors.f32"
            ids: list[pa.Array] = []
            n, dim = 0, None
            with path.open("wb") as out:
                for batch in read_input():
                    vectors = self.vectors(batch, dim)
                    dim = vectors.shape[1] if len(vectors) else dim
                    out.write(np.ascontiguousarray(vectors, np.float32).tobytes())
                    ids.extend(batch[ID].cast(pa.string()).chunks)
                    n += batch.num_rows
            all_ids = pa.chunked_array(ids, pa.string())
            if n == 0 or not dim:
                return ClusterFit(all_ids, np.empty(0, np.int64), np.empty(0, np.int64))
            vectors = np.memmap(path, np.float32, mode="r", shape=(n, dim))
            found = cosine_clusters(vectors, self.threshold, self.block_size)
            del vectors
        members, keepers = cluster_members(found.labels)
        return ClusterFit(
            all_ids,
            members,
            keepers,
            matches=found.match[members],
            scores=found.score[members].astype(np.float64),
            pairs=found.pairs,
            edges=found.edges,
        )
