"""ExactDedupe in a real pipeline: normalisation, keeper choice, rejects with reasons."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.curate.pipeline import Pipeline
from assay.curate.recipes import parse_recipe
from assay.curate.stage import Outcome
from assay.operators.dedupe import ExactDedupe


def run_stage(stage, rows: list[dict], workspace: Path, batch_size: int = 3):
    result = Pipeline([stage], batch_size=batch_size).run(
        pa.Table.from_pylist(rows), workspace=workspace, progress="quiet"
    )
    return result.to_arrow(), result.rejects()


def test_variants_of_case_whitespace_nfkc_and_punctuation_collapse(workspace: Path) -> None:
    rows = [
        {"text": "Hello World"},
        {"text": "something else"},
        {"text": "  hello\tWORLD "},
        {"text": "ｈｅｌｌｏ world"},  # full-width letters: NFKC makes them ASCII
        {"text": "Hello, World"},
        {"text": "Hello World 2"},
    ]
    kept, rejects = run_stage(ExactDedupe(), rows, workspace)
    assert kept["id"].to_pylist() == ["0", "1", "5"]
    assert kept["cluster_id"].to_pylist() == ["0", "1", "5"]
    assert sorted(rejects["id"].to_pylist()) == ["2", "3", "4"]
    assert set(rejects["_reason"].to_pylist()) == {"exact duplicate of 0"}
    assert set(rejects["cluster_id"].to_pylist()) == {"0"}


def test_punctuation_and_several_columns(workspace: Path) -> None:
    rows = [
        {"q": "What is 2+2?", "a": "4"},
        {"q": "what is 22", "a": "4."},
        {"q": "what is 22", "a": "5"},
        {"q": "what is 2", "a": "24"},  # the same characters split across the columns
    ]
    kept, rejects = run_stage(ExactDedupe(columns=["q", "a"]), rows, workspace)
    assert kept["id"].to_pylist() == ["0", "2", "3"]
    assert rejects["_reason"].to_pylist() == ["exact duplicate of 0"]


texts = st.lists(st.text(alphabet="abcdef ", min_size=0, max_size=12), min_size=1, max_size=25)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts, st.randoms(use_true_random=False))
def test_exact_duplicates_always_cluster_and_keeper_is_first(
    tmp_path_factory, values: list[str], rnd
) -> None:
    rows = [{"text": v} for v in values] + [{"text": rnd.choice(values)} for _ in range(5)]
    stage = ExactDedupe(normalize="none", keep_spaces=True)
    table = pa.Table.from_pylist([{"id": str(i), **r} for i, r in enumerate(rows)])
    stage.fit(lambda: iter([table.slice(0, 10), table.slice(10)]))
    out = stage.process(table)
    kept, rejected = (
        (out.kept, out.rejected) if isinstance(out, Outcome) else (out, out.slice(0, 0))
    )
    first_of = {}
    for i, r in enumerate(rows):
        first_of.setdefault(r["text"], str(i))
    assert sorted(kept["id"].to_pylist(), key=int) == sorted(first_of.values(), key=int)
    every = pa.concat_tables([kept, rejected])
    cluster = dict(zip(every["id"].to_pylist(), every["cluster_id"].to_pylist(), strict=True))
    for i, r in enumerate(rows):
        assert cluster[str(i)] == first_of[r["text"]]


def test_named_in_a_recipe(workspace: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n{"text": "A"}\n{"text": "b"}\n')
    pipeline = parse_recipe(
        f"source: {data}\nstages:\n  - ExactDedupe: {{columns: [text]}}\n  - MinhashDedupe: {{column: text, threshold: 0.8}}\n"
    )
    result = pipeline.run(workspace=workspace, progress="quiet")
    assert result.to_arrow()["id"].to_pylist() == ["0", "2"]
