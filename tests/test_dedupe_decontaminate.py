"""Decontaminate: exactly the rows sharing an n-gram with an eval set go, with the n-gram."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from assay.curate.pipeline import Pipeline
from assay.curate.recipes import parse_recipe
from assay.curate.stage import Outcome
from assay.operators.dedupe import Decontaminate

WORD = st.sampled_from(["a", "b", "c", "d", "e", "f"])
TEXT = st.lists(WORD, min_size=0, max_size=14).map(" ".join)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(TEXT, min_size=1, max_size=15),
    st.lists(TEXT, min_size=1, max_size=5),
    st.integers(1, 4),
)
def test_removes_exactly_the_rows_with_an_overlapping_ngram(
    train: list[str], evals: list[str], n: int
) -> None:
    table = pa.table({"id": [str(i) for i in range(len(train))], "text": train})
    out = Decontaminate(eval_sets={"ev": evals}, ngram=n).process(table)
    eval_grams = set().union(*(ngrams(e, n) for e in evals))
    expected = {str(i) for i, t in enumerate(train) if ngrams(t, n) & eval_grams}
    removed = set(out.rejected["id"].to_pylist()) if isinstance(out, Outcome) else set()
    assert removed == expected
    if isinstance(out, Outcome):
        for rid, reason in zip(
            out.rejected["id"].to_pylist(), out.reason_array().to_pylist(), strict=True
        ):
            gram = tuple(reason.split(": ", 1)[1].strip('"').split(" "))
            assert len(gram) == n
            assert gram in eval_grams and gram in ngrams(train[int(rid)], n)


def test_eval_sets_from_files_and_columns_in_a_pipeline(tmp_path: Path, workspace: Path) -> None:
    question = (
        "Natalia sold clips to 48 of her friends in April and then she sold half as many in May"
    )
    heldout = tmp_path / "heldout.parquet"
    pq.write_table(pa.table({"prompt": [question, "short one"]}), heldout)
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text(
        '{"q": "completely unrelated words that go on for more than thirteen tokens in a row here"}\n'
    )
    rows = [
        {"text": "Tutor: " + question.upper() + "; how many clips?"},  # overlaps heldout
        {"text": "short one"},  # shorter than 13 words: never matches
        {
            "text": "a fresh training text about the weather that shares nothing with either set at all"
        },
        {"text": "x completely unrelated words that go on for more than thirteen tokens in a row"},
    ]
    stage = Decontaminate(
        eval_sets={
            "heldout": {"path": str(heldout), "columns": ["prompt"]},
            "other": {"path": str(jsonl), "columns": ["q"]},
        }
    )
    result = Pipeline([stage]).run(
        pa.Table.from_pylist(rows), workspace=workspace, progress="quiet"
    )
    assert result.to_arrow()["id"].to_pylist() == ["1", "2"]
    reasons = dict(
        zip(
            result.rejects()["id"].to_pylist(), result.rejects()["_reason"].to_pylist(), strict=True
        )
    )
    assert reasons["0"] == (
        '13-gram overlap with eval set "heldout": '
        '"natalia sold clips to 48 of her friends in april and then she"'
    )
    assert reasons["3"].startswith('13-gram overlap with eval set "other": "completely unrelated')


def test_several_training_columns() -> None:
    table = pa.table(
        {"id": ["0", "1"], "prompt": ["p q r s", "u v w"], "response": ["x y", "alpha beta gamma"]}
    )
    out = Decontaminate(
        columns=["prompt", "response"], eval_sets={"e": ["beta gamma"]}, ngram=2
    ).process(table)
    assert isinstance(out, Outcome)
    assert out.rejected["id"].to_pylist() == ["1"]
    assert out.reason_array().to_pylist() == ['2-gram overlap with eval set "e": "beta gamma"']


def test_named_in_a_recipe_with_inline_and_file_eval_sets(tmp_path: Path, workspace: Path) -> None:
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"prompt": "one two three four five"}\n')
    data = tmp_path / "train.jsonl"
    data.write_text(
        '{"text": "zero one two three four five six"}\n'
        '{"text": "alpha beta gamma delta"}\n'
        '{"text": "x alpha beta gamma y"}\n'
    )
    recipe = f"""
source: {data}
stages:
  - Decontaminate:
      ngram: 3
      eval_sets:
        heldout: {{path: {heldout}, columns: [prompt]}}
        inline: ["alpha beta gamma"]
"""
    result = parse_recipe(recipe).run(workspace=workspace, progress="quiet")
    assert result.to_arrow()["id"].to_pylist() == []
    reasons = sorted(result.rejects()["_reason"].to_pylist())
    assert reasons == [
        '3-gram overlap with eval set "heldout": "one two three"',
        '3-gram overlap with eval set "inline": "alpha beta gamma"',
        '3-gram overlap with eval set "inline": "alpha beta gamma"',
    ]


def test_an_eval_set_needs_exactly_one_origin() -> None:
    with pytest.raises(ValidationError):
        Decontaminate(eval_sets={"e": {"columns": ["text"]}})
    with pytest.raises(ValidationError):
        Decontaminate(eval_sets={"e": {"texts": ["a"], "path": "x.parquet"}})


def test_eval_sets_are_a_snapshot_until_reloaded(tmp_path: Path) -> None:
    heldout = tmp_path / "heldout.parquet"
    pq.write_table(pa.table({"text": ["one two three"]}), heldout)
    train = pa.table({"id": ["0", "1"], "text": ["one two three", "four five six"]})
    stage = Decontaminate(eval_sets={"h": {"path": str(heldout)}}, ngram=3)

    def removed() -> list[str]:
        out = stage.process(train)
        return out.rejected["id"].to_pylist() if isinstance(out, Outcome) else []

    assert removed() == ["0"]
    pq.write_table(pa.table({"text": ["four five six"]}), heldout)
    assert removed() == ["0"]  # the first batch's snapshot holds for this stage object
    stage.reload_eval_sets()
    assert removed() == ["1"]
