"""SemanticDedupe: cosine clusters by blocked products; one test with the real MiniLM model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from assay.curate.pipeline import Pipeline
from assay.curate.stage import Outcome
from assay.operators.dedupe import SemanticDedupe


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
