"""What the three dedupe stages share: the fit-then-process contract, unique ids, fit stats."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from assay.curate.errors import StageError
from assay.curate.stage import Outcome
from assay.operators.dedupe import ExactDedupe, MinhashDedupe, SemanticDedupe
from assay.operators.dedupe.clusters import ClusterAssignment

TABLE = pa.table(
    {
        "id": ["a", "b", "c"],
        "text": ["same words here", "same words here", "other"],
        "emb": pa.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], pa.list_(pa.float32())),
    }
)
STAGES = [
    ExactDedupe(),
    MinhashDedupe(),
    SemanticDedupe(embedding_column="emb"),
]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_process_before_fit_is_refused(stage) -> None:
    fresh = stage.model_copy()
    with pytest.raises(StageError, match=r"fit\(\) must run before process\(\)"):
        fresh.process(TABLE)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_each_stage_removes_the_copy_after_fit(stage) -> None:
    fresh = stage.model_copy()
    fresh.fit(lambda: iter([TABLE.slice(0, 2), TABLE.slice(2)]))
    out = fresh.process(TABLE)
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["a", "c"]
    assert out.rejected["cluster_id"].to_pylist() == ["a"]
    stats = fresh.fit_stats
    assert (stats.rows, stats.clusters, stats.removed) == (3, 1, 1)


def test_cluster_assignment_names_a_duplicated_id() -> None:
    ids = pa.array(["x", "y", "x"])
    with pytest.raises(ValueError, match=r"row id 'x' occurs 2 times"):
        ClusterAssignment(ids, pa.array(["k", "k", "k"]), "duplicate of {keeper}")


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_duplicate_input_ids_are_refused_naming_the_id(stage) -> None:
    # "b" twice: once as a copy of "a", once as a distinct row that must not inherit its cluster
    table = TABLE.set_column(0, "id", pa.array(["a", "b", "b"]))
    fresh = stage.model_copy()
    with pytest.raises(StageError, match=r"row id 'b'") as caught:
        fresh.fit(lambda: iter([table]))
    assert caught.value.row_id == "b"


def test_minhash_fit_stats_count_pairs_edges_and_removals() -> None:
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in rng.integers(0, 10_000, 60)]
    texts = [" ".join(words)] * 4 + [" ".join(f"u{i}" for i in range(60))]
    table = pa.table({"id": [str(i) for i in range(5)], "text": texts})
    stage = MinhashDedupe()
    stage.fit(lambda: iter([table.slice(0, 2), table.slice(2)]))
    stats = stage.fit_stats
    assert (stats.rows, stats.clusters, stats.removed) == (5, 1, 3)
    assert stats.pairs >= stats.edges >= 3  # four copies need three edges at least
