"""Normalize's ASCII fast path gives exactly what the general kernels give, for every flag."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from assay.operators.text import WHITESPACE_RUNS, Normalize

PIECES = [
    "word", "Word", "WORD", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f",
    "é", "É", "ﬁ", "Ｈｅｌｌｏ", "\u00a0", "\u2003", "\u3000", "\u0085", "\u200b", "ß", "İ",
    "x", ".", "-", "42",
]  # fmt: skip


def _reference(values: pa.ChunkedArray, stage: Normalize) -> pa.ChunkedArray:
    """Every kernel on every row: what Normalize did before its fast path."""
    if stage.unicode_form:
        values = pc.utf8_normalize(values, form=stage.unicode_form)
    if stage.collapse_whitespace:
        values = pc.replace_substring_regex(values, pattern=WHITESPACE_RUNS, replacement=" ")
    if stage.strip:
        values = pc.utf8_trim_whitespace(values)
    if stage.lowercase:
        values = pc.utf8_lower(values)
    return values


def _texts(rng: random.Random, n: int, ascii_only: bool) -> list[str | None]:
    pieces = [p for p in PIECES if p.isascii()] if ascii_only else PIECES
    out: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(None)
        elif rng.random() < 0.6:  # plain single-spaced words, the common case
            out.append(" ".join(rng.choice(["data", "Model", "a", "B"]) for _ in range(5)))
        else:
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))))
    return out


FLAGS = list(itertools.product(["NFKC", "NFC", None], [True, False], [True, False], [True, False]))


@pytest.mark.parametrize(("form", "collapse", "strip", "lower"), FLAGS)
@pytest.mark.parametrize("share_wide", [0.0, 0.02, 0.9])
def test_normalize_equals_the_general_kernels(form, collapse, strip, lower, share_wide) -> None:
    rng = random.Random(hash((form, collapse, strip, lower, share_wide)) & 0xFFFF)
    texts = [
        t if rng.random() < share_wide else s
        for t, s in zip(_texts(rng, 400, False), _texts(rng, 400, True), strict=True)
    ]
    stage = Normalize(unicode_form=form, collapse_whitespace=collapse, strip=strip, lowercase=lower)
    for type_ in (pa.string(), pa.large_string()):
        column = pa.chunked_array([texts[:150], texts[150:]], type_)
        table = pa.table({"id": [str(i) for i in range(len(texts))], "text": column})
        for batch in (table, table.slice(37, 200)):  # sliced chunks: offsets into buffers
            got = stage.process(batch)["text"]
            expected = _reference(batch["text"], stage)
            assert got.type == expected.type
            assert got.to_pylist() == expected.to_pylist()


def test_normalize_writes_another_column_and_keeps_empty_batches() -> None:
    table = pa.table({"text": ["  A\tb  ", "ok"]})
    out = Normalize(output_column="clean", lowercase=True).process(table)
    assert out["clean"].to_pylist() == ["a b", "ok"] and out["text"] == table["text"]
    empty = pa.table({"text": pa.array([], pa.string())})
    assert Normalize().process(empty)["text"].to_pylist() == []
