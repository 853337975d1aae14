"""Text normalisation before hashing and shingling: case, NFKC, punctuation, digits.

Near duplicates that differ only in case, compatibility forms or punctuation must be found
by both dedupe stages, and MinhashDedupe's exact-Jaccard check must count the same
normalised words its shingles come from (a pair at normalised Jaccard 0.80 is >= 0.8).
"""

from __future__ import annotations

import random
import re
import unicodedata

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from assay.curate.recipes import parse_recipe
from assay.curate.stage import Outcome
from assay.operators.dedupe import ExactDedupe, MinhashDedupe
from assay.operators.dedupe.normalize import TextNormalization, normalized, resolve, words

VOCAB = [f"tok{i}" for i in range(5000)] + ["café", "naïve", "résumé", "über", "niño"]


def fit_process(stage, table: pa.Table, batch: int = 4) -> tuple[pa.Table, pa.Table | None]:
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
    return pa.concat_tables(kept), pa.concat_tables(rejected) if rejected else None


def with_ids(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": texts})


def full_width(word: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)


def noisy(words_: list[str], rng: random.Random) -> str:
    """The same lower-cased alphanumeric words, written differently: random case, full-width
    letters, words glued by "_" or "-", punctuation and symbols around words, odd spacing."""
    out = []
    for w in words_:
        w = w.upper() if rng.random() < 0.3 else w
        w = full_width(w) if rng.random() < 0.2 else w
        w = rng.choice(["", "(", "«", "*"]) + w + rng.choice(["", ",", ".", "!", ":"])
        out.append(w)
    text = out[0]
    for w in out[1:]:
        text += rng.choice([" ", "  ", "\t", "\n", "_", "-", " — ", " / "]) + w
    return text


def test_minhash_finds_case_width_and_punctuation_variants() -> None:
    rng = np.random.default_rng(5)
    prng = random.Random(5)
    docs = [[VOCAB[i] for i in rng.integers(0, len(VOCAB), 150)] for _ in range(6)]
    texts = [" ".join(d) for d in docs] + [noisy(docs[1], prng), noisy(docs[4], prng)]
    kept, rejected = fit_process(MinhashDedupe(threshold=0.8), with_ids(texts))
    assert kept["id"].to_pylist() == [f"r{i}" for i in range(6)]
    reasons = dict(zip(rejected["id"].to_pylist(), rejected["_reason"].to_pylist(), strict=True))
    assert reasons == {
        "r6": "near duplicate of r1 (jaccard 1.00)",
        "r7": "near duplicate of r4 (jaccard 1.00)",
    }


def test_exact_jaccard_check_counts_the_normalised_words_at_0_80() -> None:
    """184 words = 180 five-grams; m substitutions >= 5 apart give J = (180 - 5m) / (180 + 5m):
    4 -> exactly 0.80 (kept as a duplicate), 5 -> 0.756 (not one). The variants are also
    written noisily, which changes their raw words but not their normalised ones."""
    rng = np.random.default_rng(9)
    prng = random.Random(9)
    base = [f"w{i}" for i in rng.integers(0, 10**6, 184)]
    at_080, below = list(base), list(base)
    for k, pos in enumerate([10, 50, 90, 130]):
        at_080[pos] = f"new{k}"
    for k, pos in enumerate([10, 45, 80, 115, 150]):
        below[pos] = f"other{k}"
    texts = [" ".join(base), noisy(at_080, prng), noisy(below, prng)]
    # 64 bands of 2 rows: every pair above 0.5 is a candidate, so the check alone decides
    stage = MinhashDedupe(threshold=0.8, bands=64, rows=2)
    kept, rejected = fit_process(stage, with_ids(texts))
    assert kept["id"].to_pylist() == ["r0", "r2"]
    assert rejected["_reason"].to_pylist() == ["near duplicate of r0 (jaccard 0.80)"]


def test_exact_dedupe_ignores_case_punctuation_and_spacing_by_default() -> None:
    texts = [
        "It's a test, OK?",
        "its a test ok",  # apostrophe deleted
        "it s  a TEST ok",  # apostrophe replaced by a space
        "It’s a test — ok!",
        "What is 2+2?",
        "What is 3+3?",  # different digits: different problems by default
        "something else",
    ]
    kept, rejected = fit_process(ExactDedupe(), with_ids(texts))
    assert kept["id"].to_pylist() == ["r0", "r4", "r5", "r6"]
    assert set(rejected["_reason"].to_pylist()) == {"exact duplicate of r0"}
    kept, _ = fit_process(ExactDedupe(normalize={"digits": True}), with_ids(texts))
    assert kept["id"].to_pylist() == ["r0", "r4", "r6"]
    kept, _ = fit_process(ExactDedupe(normalize="none"), with_ids(texts))
    assert kept.num_rows == len(texts)


def test_normalize_none_keeps_minhash_case_sensitive() -> None:
    rng = np.random.default_rng(2)
    doc = " ".join(VOCAB[i] for i in rng.integers(0, 5000, 80))
    table = with_ids([doc, doc.upper()])
    kept, _ = fit_process(MinhashDedupe(), table)
    assert kept.num_rows == 1
    kept, rejected = fit_process(MinhashDedupe(normalize="none"), table)
    assert kept.num_rows == 2 and rejected is None


def test_presets_options_and_errors() -> None:
    assert resolve("default") == TextNormalization()
    assert resolve("datatrove") == TextNormalization(digits=True, accents=True)
    assert MinhashDedupe(normalize={"digits": True}).normalize == TextNormalization(digits=True)
    with pytest.raises(ValidationError):
        MinhashDedupe(normalize="lowercase-only")
    with pytest.raises(ValidationError):
        ExactDedupe(normalize={"digit": True})
    text = pl.Series(["Café № 3.14 — Ｈｅｌｌｏ_World", None])
    out = [normalized(text, preset).to_list() for preset in ("default", "datatrove", "none")]
    assert [row[0] for row in out] == [
        "café no 3 14 hello world",
        "cafe no 0 hello world",
        text[0],
    ]
    assert [row[1] for row in out] == ["", "", ""]


def test_legacy_exact_flags_still_mean_what_they_meant() -> None:
    stage = ExactDedupe(lowercase=False, whitespace=False, unicode_form=None)
    assert stage.normalize == TextNormalization(
        lowercase=False, unicode_form=None, punctuation=False, whitespace=False
    )
    assert stage.keep_spaces
    kept, _ = fit_process(stage, with_ids(["a b", "a  b", "A b", "a b"]))
    assert kept["id"].to_pylist() == ["r0", "r1", "r2"]


def test_normalize_in_a_recipe(workspace, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "Pi is 3.14!"}\n{"text": "pi is 2.71"}\n{"text": "other"}\n')
    recipe = (
        f"source: {data}\nstages:\n"
        "  - ExactDedupe: {columns: [text], normalize: {digits: true}}\n"
    )
    result = parse_recipe(recipe).run(workspace=workspace, progress="quiet")
    assert result.to_arrow()["id"].to_pylist() == ["0", "2"]


# --------------------------------------------------------------------- properties

ALPHABET = list("abcXYZ019 ,.!?'-_()\t\n") + [
    "é",
    "É",
    "e\u0301",  # e + combining acute: NFKC composes it to é
    "ﬁ",  # ligature: NFKC gives "fi"
    "Ａ",
    "１",  # full-width
    "²",  # superscript two: NFKC gives "2"
    "’",
    "—",
    "€",
    "\u00ad",  # soft hyphen (format character)
    "\u200b",  # zero-width space (format character)
    "\u00a0",  # no-break space
]


def reference_words(text: str, digits: bool = False, accents: bool = False) -> list[str]:
    """Row-by-row Python version of the default normalisation and word split."""
    t = unicodedata.normalize("NFKC", text).lower()
    if accents:
        t = unicodedata.normalize("NFD", t)
        t = unicodedata.normalize("NFC", "".join(c for c in t if unicodedata.category(c) != "Mn"))
    if digits:
        t = re.sub(r"\d+(?:[.,]\d+)*", "0", t)
    out = []
    for c in t:
        cat = unicodedata.category(c)
        out.append("" if cat == "Cf" else " " if cat[0] in "PS" or cat == "Cc" else c)
    return "".join(out).split()


@settings(max_examples=120, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join), min_size=1, max_size=6),
    st.booleans(),
    st.booleans(),
)
def test_words_match_a_python_reference(texts: list[str], digits: bool, accents: bool) -> None:
    norm = TextNormalization(digits=digits, accents=accents)
    got_words = words(pl.Series(texts), norm).to_list()
    got_text = normalized(pl.Series(texts), norm).to_list()
    for text, w, s in zip(texts, got_words, got_text, strict=True):
        expected = reference_words(text, digits, accents)
        assert w == expected
        assert s == " ".join(expected)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(5, 60))
def test_noisy_rewrites_always_cluster_with_their_source(seed: int, n_words: int) -> None:
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    docs = [[VOCAB[i] for i in rng.integers(0, len(VOCAB), n_words)] for _ in range(4)]
    texts = [" ".join(d) for d in docs] + [noisy(d, prng) for d in docs]
    for stage in (ExactDedupe(), MinhashDedupe()):
        kept, rejected = fit_process(stage, with_ids(texts), batch=int(rng.integers(1, 8)))
        assert kept["id"].to_pylist() == ["r0", "r1", "r2", "r3"]
        ids, clusters = rejected["id"].to_pylist(), rejected["cluster_id"].to_pylist()
        cluster = dict(zip(ids, clusters, strict=True))
        assert cluster == {f"r{i + 4}": f"r{i}" for i in range(4)}
