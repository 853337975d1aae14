"""Shingling, union-find, LSH band choice and exact Jaccard: the pieces the dedupe stages share."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.operators.dedupe.components import connected_components, join
from assay.operators.dedupe.jaccard import ShingleSets
from assay.operators.dedupe.lsh import candidate_probability, choose_bands
from assay.operators.dedupe.shingles import shingle_hashes
from assay.operators.dedupe.signatures import Permutations, band_keys, minhash_signatures

WORDS = st.lists(
    st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]), max_size=30
)


def python_shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@settings(max_examples=60, deadline=None)
@given(st.lists(WORDS, min_size=1, max_size=8), st.integers(1, 5))
def test_shingle_sets_match_a_python_reference(docs: list[list[str]], n: int) -> None:
    texts = [" ".join(d) for d in docs]
    sh = shingle_hashes(pa.array(texts), n)
    for i, text in enumerate(texts):
        got = set(sh.hashes[sh.offsets[i] : sh.offsets[i + 1]].tolist())
        assert len(got) == len(python_shingles(text, n))
    # equal shingle sets give equal hash sets across documents
    for i in range(len(texts)):
        for j in range(len(texts)):
            same = python_shingles(texts[i], n) == python_shingles(texts[j], n)
            a = set(sh.hashes[sh.offsets[i] : sh.offsets[i + 1]].tolist())
            b = set(sh.hashes[sh.offsets[j] : sh.offsets[j + 1]].tolist())
            assert (a == b) == same


def test_case_and_punctuation_do_not_change_word_shingles() -> None:
    sh = shingle_hashes(pa.array(["Hello, World! foo bar", "hello world foo   BAR", None]), 2)
    assert (
        sh.hashes[sh.offsets[0] : sh.offsets[1]].tolist()
        == sh.hashes[sh.offsets[1] : sh.offsets[2]].tolist()
    )
    assert sh.offsets[3] == sh.offsets[2]  # null text: no shingles


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)), max_size=60))
def test_components_match_a_reference_union_find(n: int, edges: list[tuple[int, int]]) -> None:
    edges = [(a % n, b % n) for a, b in edges]
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    expected = [find(i) for i in range(n)]
    left = np.array([a for a, _ in edges], np.int64)
    right = np.array([b for _, b in edges], np.int64)
    labels = connected_components(n, left, right)
    # the label is the smallest member: same partition, same representative
    assert labels.tolist() == [
        min(j for j in range(n) if expected[j] == expected[i]) for i in range(n)
    ]


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 40),
    st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)), max_size=80),
    st.integers(1, 30),
)
def test_join_in_chunks_keeps_a_spanning_forest(
    n: int, edges: list[tuple[int, int]], chunk: int
) -> None:
    left = np.array([a % n for a, _ in edges], np.int64)
    right = np.array([b % n for _, b in edges], np.int64)
    labels = np.arange(n, dtype=np.int64)
    kept_left, kept_right = [], []
    for start in range(0, len(edges), chunk):
        part = slice(start, start + chunk)
        kept = join(labels, left[part], right[part])
        kept_left.append(left[part][kept])
        kept_right.append(right[part][kept])
    expected = connected_components(n, left, right)
    assert labels.tolist() == expected.tolist()
    kept_l = np.concatenate(kept_left) if edges else left
    kept_r = np.concatenate(kept_right) if edges else right
    # the kept edges alone connect the same components, with no edge to spare
    assert connected_components(n, kept_l, kept_r).tolist() == expected.tolist()
    assert len(kept_l) == n - len(np.unique(expected))


def test_choose_bands_for_0_8_and_its_s_curve() -> None:
    assert choose_bands(0.8, 128) == (18, 7)
    assert candidate_probability(0.8, 18, 7) >= 0.97
    assert candidate_probability(0.5, 18, 7) < 0.15
    bands, rows = choose_bands(0.9, 128)
    assert candidate_probability(0.9, bands, rows) >= 0.97


def test_minhash_agreement_estimates_jaccard() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 100_000, 400)]
    edited = list(words)
    for i in range(0, 400, 20):  # 20 substitutions, 5 apart or more
        edited[i] = f"new{i}"
    sh = shingle_hashes(pa.array([" ".join(words), " ".join(edited)]), 5)
    truth = len(python_shingles(" ".join(words), 5) & python_shingles(" ".join(edited), 5)) / len(
        python_shingles(" ".join(words), 5) | python_shingles(" ".join(edited), 5)
    )
    sig = minhash_signatures(sh, Permutations.make(1024, seed=1))
    assert abs((sig[0] == sig[1]).mean() - truth) < 0.05
    keys = band_keys(sig[:, :126], 18, 7)
    assert keys.shape == (2, 18)


def test_exact_jaccard_of_pairs() -> None:
    texts = ["a b c d e f g h", "a b c d e f g x", "q r s t", "a b c d e f g h"]
    sh = shingle_hashes(pa.array(texts), 3)
    sets = ShingleSets(np.arange(4))
    sets.add_batch(0, sh.hashes, sh.offsets)
    sets.finish()
    got = sets.jaccard(np.array([0, 0, 0]), np.array([1, 2, 3]))
    assert np.allclose(got, [5 / 7, 0.0, 1.0])
