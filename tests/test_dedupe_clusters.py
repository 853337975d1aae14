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


def _assignment() -> ClusterAssignment:
    # clusters {k1: m1, m2} and {k2: m3}; the batch below also has ids of no cluster
    return ClusterAssignment(
        pa.array(["k1", "m1", "m2", "k2", "m3"]),
        pa.array(["k1", "k1", "k1", "k2", "k2"]),
        "near duplicate of {match} ({score})",
        scores=np.array([np.nan, 0.91, 0.876, np.nan, 1.0]),
        matches=pa.array(["k1", "k1", "m1", "k2", "k2"]),
    )


BATCH = pa.table({"id": ["m2", "x", "k1", "m1", "y", "m3"], "n": [0, 1, 2, 3, 4, 5]})


def test_apply_finds_members_by_their_sorted_hashes_and_rejects_non_keepers() -> None:
    out = _assignment().apply("dedupe", BATCH, "cluster_id")
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["x", "k1", "y"]
    assert out.kept["cluster_id"].to_pylist() == ["x", "k1", "y"]
    assert out.rejected["id"].to_pylist() == ["m2", "m1", "m3"]
    assert out.rejected["cluster_id"].to_pylist() == ["k1", "k1", "k2"]
    assert out.reasons.to_pylist() == [
        "near duplicate of m1 (0.88)",
        "near duplicate of k1 (0.91)",
        "near duplicate of k2 (1.00)",
    ]


def test_apply_gives_the_same_outcome_as_the_join_it_falls_back_to() -> None:
    # the join runs only when two member ids share a 64-bit hash: force it to compare
    fast, joined = _assignment(), _assignment()
    joined._lookup = None
    nulls = pa.table({"id": ["m1", None, "k2"], "n": [0, 1, 2]})  # a null id is dropped
    for batch in (BATCH, BATCH.slice(1, 1), BATCH.slice(0, 0), BATCH.slice(2, 1), nulls):
        a, b = fast.apply("d", batch, "cluster_id"), joined.apply("d", batch, "cluster_id")
        if isinstance(a, Outcome):
            assert isinstance(b, Outcome)
            assert a.kept.equals(b.kept) and a.rejected.equals(b.rejected)
            assert a.reasons.equals(b.reasons) and a.reasons.type == b.reasons.type
        else:
            assert a.equals(b) and a.schema == b.schema


def test_apply_with_no_duplicates_keeps_every_row_as_its_own_cluster() -> None:
    empty = ClusterAssignment(pa.array([], pa.string()), pa.array([], pa.string()), "dup")
    out = empty.apply("dedupe", BATCH, "cluster_id")
    assert isinstance(out, pa.Table)
    assert out["cluster_id"].to_pylist() == BATCH["id"].to_pylist()
