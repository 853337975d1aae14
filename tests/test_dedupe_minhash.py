"""MinhashDedupe: near duplicates cluster, distinct texts do not, keepers are deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from assay.curate.pipeline import Pipeline
from assay.curate.stage import Outcome
from assay.operators.dedupe import MinhashDedupe

VOCAB = [f"tok{i}" for i in range(5000)]


def random_doc(rng: np.random.Generator, n_words: int = 80) -> list[str]:
    return [VOCAB[i] for i in rng.integers(0, len(VOCAB), n_words)]


def substitute(words: list[str], every: int, tag: str) -> list[str]:
    out = list(words)
    for i in range(0, len(out), every):
        out[i] = f"{tag}{i}"
    return out


def fit_process(stage: MinhashDedupe, table: pa.Table, batch: int = 7) -> tuple[pa.Table, pa.Table]:
    """Run the stage's fit/process contract directly; return (kept, rejected with _reason)."""
    batches = [table.slice(i, batch) for i in range(0, table.num_rows, batch)]
    stage.fit(lambda: iter(batches))
    kept, rejected = [], []
    for b in batches:
        out = stage.process(b)
        if isinstance(out, Outcome):
            kept.append(out.kept)
            rejected.append(out.rejected.append_column("_reason", out.reason_array()))
        else:
            kept.append(out)
    rej = pa.concat_tables(rejected) if rejected else None
    return pa.concat_tables(kept), rej


def with_ids(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts})


def test_near_duplicates_cluster_with_the_first_and_far_ones_stay(workspace: Path) -> None:
    rng = np.random.default_rng(7)
    base = random_doc(rng, 200)
    texts = [
        " ".join(base),  # r0 original
        " ".join(random_doc(rng, 200)),  # r1 unrelated
        " ".join(substitute(base, 80, "x")),  # r2: 3 edits, Jaccard ~0.86
        " ".join(base).upper(),  # r3: case variant, Jaccard 1
        " ".join(substitute(base, 12, "y")),  # r4: 17 edits, Jaccard ~0.4
    ]
    result = Pipeline([MinhashDedupe(threshold=0.8)], batch_size=2).run(
        with_ids(texts), workspace=workspace, progress="quiet"
    )
    assert result.to_arrow()["id"].to_pylist() == ["r0", "r1", "r4"]
    rejects = result.rejects()
    reasons = dict(zip(rejects["id"].to_pylist(), rejects["_reason"].to_pylist(), strict=True))
    assert reasons["r3"] == "near duplicate of r0 (jaccard 1.00)"
    assert reasons["r2"].startswith("near duplicate of r0 (jaccard 0.8")
    assert set(rejects["cluster_id"].to_pylist()) == {"r0"}


def test_without_verify_candidates_are_clusters_and_with_verify_they_are_checked() -> None:
    rng = np.random.default_rng(3)
    base = random_doc(rng, 300)
    # 15 edits 20 apart: Jaccard = (296-75)/(296+75) ~ 0.6, a candidate for loose bands
    texts = [" ".join(base), " ".join(substitute(base, 20, "z"))]
    loose = dict(threshold=0.8, bands=64, rows=2, num_perm=128)
    kept, _ = fit_process(MinhashDedupe(verify=False, **loose), with_ids(texts))
    assert kept.num_rows == 1
    kept, rejected = fit_process(MinhashDedupe(verify=True, **loose), with_ids(texts))
    assert kept.num_rows == 2 and rejected is None


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 12), st.integers(1, 5))
def test_exact_duplicates_always_cluster_to_the_first_copy(
    seed: int, n_docs: int, copies: int
) -> None:
    rng = np.random.default_rng(seed)
    docs = [" ".join(random_doc(rng, int(rng.integers(3, 60)))) for _ in range(n_docs)]
    picks = rng.integers(0, n_docs, copies)
    texts = docs + [docs[p] for p in picks]
    order = rng.permutation(len(texts))
    texts = [texts[i] for i in order]
    kept, rejected = fit_process(MinhashDedupe(), with_ids(texts), batch=int(rng.integers(1, 9)))
    first: dict[str, str] = {}
    for i, t in enumerate(texts):
        first.setdefault(t, f"r{i}")
    assert sorted(kept["id"].to_pylist()) == sorted(first.values())
    if rejected is not None:
        for rid, cid in zip(
            rejected["id"].to_pylist(), rejected["cluster_id"].to_pylist(), strict=True
        ):
            assert cid == first[texts[int(rid[1:])]]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_distinct_random_texts_almost_never_cluster(seed: int) -> None:
    rng = np.random.default_rng(seed)
    texts = [" ".join(random_doc(rng, 50)) for _ in range(60)]
    kept, rejected = fit_process(MinhashDedupe(verify=False), with_ids(texts), batch=25)
    assert kept.num_rows == 60 and rejected is None


def test_keeper_choice_is_deterministic_across_batch_sizes_and_seeds() -> None:
    rng = np.random.default_rng(11)
    base = random_doc(rng, 120)
    family = [" ".join(substitute(base, step, f"v{step}_")) for step in (200, 90, 60, 45)]
    texts = [" ".join(random_doc(rng, 120)) for _ in range(10)] + family
    table = with_ids(texts)
    outcomes = set()
    for batch, seed in ((3, 1), (5, 2), (100, 3)):
        kept, rejected = fit_process(MinhashDedupe(seed=seed), table, batch=batch)
        outcomes.add(
            (tuple(kept["id"].to_pylist()), tuple(sorted(rejected["cluster_id"].to_pylist())))
        )
    assert outcomes == {(tuple(f"r{i}" for i in range(11)), ("r10", "r10", "r10"))}


def test_character_shingles_catch_typos() -> None:
    texts = [
        "The quick brown fox jumps over the lazy dog",
        "The quick brown fox jumps over the lazy dgo",
    ]
    kept, rejected = fit_process(
        MinhashDedupe(unit="char", ngram=5, threshold=0.7), with_ids(texts)
    )
    assert kept["id"].to_pylist() == ["r0"]
    assert rejected["_reason"][0].as_py().startswith("near duplicate of r0")


def test_parameters_are_validated() -> None:
    with pytest.raises(ValidationError):
        MinhashDedupe(threshold=1.5)
    with pytest.raises(ValidationError):
        MinhashDedupe(bands=20, rows=7)  # 140 > 128 permutations
    with pytest.raises(ValidationError):
        MinhashDedupe(bands=10)
    assert MinhashDedupe().band_shape() == (18, 7)


def test_many_spill_batches_are_read_back_in_write_order() -> None:
    """Row positions come from the order spill files are read; 25 one-row batches (names
    `bands-9` and `bands-10` sort the wrong way as text) must give each pair its own Jaccard."""
    rng = np.random.default_rng(21)
    texts = [" ".join(random_doc(rng, 100)) for _ in range(25)]
    base = texts[3].split()
    texts[12] = " ".join(substitute(base, 50, "e"))  # 2 edits: 8 of 100 shingles differ
    texts[21] = " ".join(substitute(base, 25, "f"))  # 4 edits
    table = with_ids(texts)
    _, rejected = fit_process(MinhashDedupe(threshold=0.7), table, batch=1)

    def jaccard(a: str, b: str) -> float:
        sa = {tuple(a.split()[i : i + 5]) for i in range(len(a.split()) - 4)}
        sb = {tuple(b.split()[i : i + 5]) for i in range(len(b.split()) - 4)}
        return len(sa & sb) / len(sa | sb)

    reasons = dict(zip(rejected["id"].to_pylist(), rejected["_reason"].to_pylist(), strict=True))
    assert set(reasons) == {"r12", "r21"}
    for row in ("r12", "r21"):
        match = reasons[row].split(" ")[3]
        other = texts[int(match[1:])]
        expected = f"near duplicate of {match} (jaccard {jaccard(texts[int(row[1:])], other):.2f})"
        assert reasons[row] == expected
