"""SemanticDedupe: cosine clusters by blocked products; one test with the real MiniLM model."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from assay.curate.errors import StageError
from assay.curate.pipeline import Pipeline
from assay.curate.stage import Outcome
from assay.operators.dedupe import SemanticDedupe
from assay.operators.dedupe.cosine import cosine_clusters


def test_blocked_search_finds_the_same_pairs_as_one_matrix() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    near = base[:10] + 0.05 * rng.normal(size=(10, 16)).astype(np.float32)
    vectors = np.concatenate([base, near])
    table = pa.table(
        {
            "id": [f"v{i}" for i in range(50)],
            "emb": pa.array(vectors.tolist(), pa.list_(pa.float32())),
        }
    )
    results = []
    for block in (3, 7, 64):
        stage = SemanticDedupe(embedding_column="emb", threshold=0.95, block_size=block)
        stage.fit(lambda t=table: iter([t.slice(0, 20), t.slice(20)]))
        out = stage.process(table)
        assert isinstance(out, Outcome)
        results.append(
            dict(
                zip(
                    out.rejected["id"].to_pylist(),
                    out.rejected["cluster_id"].to_pylist(),
                    strict=True,
                )
            )
        )
    assert results[0] == results[1] == results[2]
    assert results[0] == {f"v{40 + i}": f"v{i}" for i in range(10)}


@pytest.mark.integration
def test_real_minilm_catches_paraphrases(workspace: Path) -> None:
    texts = [
        "How do I reset my password?",
        "What is the capital of France?",
        "How can I reset my password?",
        "Explain how photosynthesis works in plants.",
        "how do i reset my password",
    ]
    result = Pipeline([SemanticDedupe(threshold=0.9)]).run(
        pa.table({"text": texts}), workspace=workspace, progress="quiet"
    )
    assert result.to_arrow()["id"].to_pylist() == ["0", "1", "3"]
    rejects = result.rejects()
    assert set(rejects["cluster_id"].to_pylist()) == {"0"}
    for row, reason in zip(rejects["id"].to_pylist(), rejects["_reason"].to_pylist(), strict=True):
        match = re.fullmatch(r"semantic duplicate of (\d) \(cosine (\d\.\d\d)\)", reason)
        assert match and match.group(1) in {"0", "2", "4"} - {row}
        assert float(match.group(2)) >= 0.9


def emb_table(vectors: list[list[float]], ids: list[str] | None = None) -> pa.Table:
    ids = ids or [f"r{i}" for i in range(len(vectors))]
    return pa.table({"id": ids, "emb": pa.array(vectors, pa.list_(pa.float32()))})


def reference_clusters(vectors: np.ndarray, threshold: float) -> dict[str, tuple[str, str]]:
    """Every pair of one full matrix, components and best matches: {removed: (cluster, match)}."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    n = len(vectors)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in zip(*np.nonzero(sim >= threshold), strict=True):
        a, b = find(int(i)), find(int(j))
        parent[max(a, b)] = min(a, b)
    return {
        f"r{i}": (f"r{find(i)}", f"r{int(np.argmax(sim[i]))}") for i in range(n) if find(i) != i
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clusters_and_reasons_match_a_full_matrix_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 24))
    pick = rng.integers(0, 12, 70)
    vectors = centres[pick] + 0.12 * rng.normal(size=(70, 24))
    vectors = np.concatenate([vectors, rng.normal(size=(30, 24))]).astype(np.float32)
    expected = reference_clusters(vectors.astype(np.float64), 0.97)
    table = emb_table(vectors.tolist())
    for block in (5, 16, 128):
        stage = SemanticDedupe(embedding_column="emb", threshold=0.97, block_size=block)
        stage.fit(lambda t=table: iter([t.slice(0, 33), t.slice(33)]))
        out = stage.process(table)
        assert isinstance(out, Outcome)
        got = {
            row: (cluster, re.match(r"semantic duplicate of (r\d+)", reason).group(1))
            for row, cluster, reason in zip(
                out.rejected["id"].to_pylist(),
                out.rejected["cluster_id"].to_pylist(),
                out.reason_array().to_pylist(),
                strict=True,
            )
        }
        assert got == expected


@pytest.mark.parametrize("block", [5, 16, 128])
def test_dense_blocks_give_what_listed_pairs_give(block: int) -> None:
    """A block with many similar pairs is reduced by mask operations, never listed."""
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(6, 8))[rng.integers(0, 6, 90)] + 0.1 * rng.normal(size=(90, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors.astype(np.float32)
    listed = cosine_clusters(vectors, 0.95, block)
    dense = cosine_clusters(vectors, 0.95, block, list_limit=0)
    assert listed.pairs == dense.pairs > 0
    assert listed.labels.tolist() == dense.labels.tolist()
    assert listed.match.tolist() == dense.match.tolist()
    assert listed.score.tolist() == dense.score.tolist()
    assert dense.edges == listed.edges == 90 - len(np.unique(dense.labels))


def test_identical_rows_keep_a_linear_number_of_edges() -> None:
    """3,000 copies are 4.5M pairs above the threshold; the fit must not hold them."""
    n = 3000
    table = pa.table(
        {
            "id": [str(i) for i in range(n)],
            "text": ["the same short text"] * n,
            "emb": pa.array([[1.0, 0.0, 0.0, 0.0]] * n, pa.list_(pa.float32())),
        }
    )
    stage = SemanticDedupe(embedding_column="emb", threshold=0.9, block_size=256)
    batches = [table.slice(i, 500) for i in range(0, n, 500)]
    tracemalloc.start()
    try:
        stage.fit(lambda: iter(batches))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = stage.fit_stats
    assert stats.pairs == n * (n - 1) // 2  # every pair was seen ...
    assert stats.edges == n - 1  # ... but only a spanning tree of them kept
    # held pairs would be 4.5M x (two int64 positions + one float64) = 108 MB at least;
    # what the fit needs is a few 256 x 256 blocks and O(n) labels
    assert peak < 16 * 2**20, f"fit peaked at {peak / 2**20:.0f} MiB"
    out = stage.process(table)
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["0"]
    assert set(out.rejected["cluster_id"].to_pylist()) == {"0"}
    assert set(out.reason_array().to_pylist()) == {"semantic duplicate of 0 (cosine 1.00)"}
    dense = cosine_clusters(np.tile(np.float32([1, 0, 0, 0]), (n, 1)), 0.9, 256, list_limit=0)
    assert (dense.pairs, dense.edges) == (stats.pairs, n - 1)
    assert dense.match.tolist() == [1] + [0] * (n - 1)


@pytest.mark.parametrize(
    ("batches", "bad_row", "problem"),
    [
        ([[[1, 0], [1], [0, 0, 1]]], "r1", "has 1 values, expected 2"),
        ([[[1, 0], None, [0, 1]]], "r1", "is null"),
        ([[[1, 0], [0, 1], [1, None]]], "r2", "has a null value"),
        ([[[1, 0], [0, 1]], [[1, 0, 0]]], "r2", "has 3 values, expected 2"),
        ([[[1, 0], [0, float("nan")]]], "r1", "is not finite"),
    ],
)
def test_ragged_null_or_non_finite_embeddings_are_refused(
    batches: list[list[list[float] | None]], bad_row: str, problem: str
) -> None:
    tables, start = [], 0
    for rows in batches:
        ids = [f"r{start + i}" for i in range(len(rows))]
        tables.append(emb_table(rows, ids))
        start += len(rows)
    stage = SemanticDedupe(embedding_column="emb")
    with pytest.raises(StageError, match=re.escape(problem)) as caught:
        stage.fit(lambda: iter(tables))
    assert caught.value.row_id == bad_row
    assert caught.value.column == "emb"
