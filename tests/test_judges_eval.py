"""Calibration: metrics on hand-made cases, the HaluEval loader (a small slice of the real
wheel data), the baselines, and `assay judge-eval` end to end (report, JSON, PNGs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI
from typer.testing import CliRunner

from assay.curate.cli import app
from assay.datasets.halueval import as_responses, dataset_card, load_halueval, split_of
from assay.judges.baselines import length_score, overlap_score
from assay.judges.metrics import best_threshold, classification_metrics, pairwise_accuracy


def test_classification_metrics_by_hand() -> None:
    labels = [True, True, True, False, False, False]
    scores = [0.9, 0.6, 0.2, 0.7, 0.1, None]  # tp tp fn fp tn, and one unscored negative
    m = classification_metrics(labels, scores)
    assert m["confusion"] == {"tp": 2, "fn": 1, "fp": 2, "tn": 1}  # unscored counts as a miss
    assert m["unjudged"] == 1
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # kappa: p_o = 0.5, p_e = (3*4 + 3*2) / 36 = 0.5 -> 0
    assert m["kappa"] == pytest.approx(0.0)
    perfect = classification_metrics([True, False, True, False], [0.8, 0.1, 0.9, 0.3])
    assert perfect["kappa"] == pytest.approx(1.0) and perfect["spearman"] > 0.8


def test_pairwise_accuracy_counts_ties_and_unscored_as_half() -> None:
    assert pairwise_accuracy([0.9, 0.5, 0.2, None], [0.1, 0.5, 0.8, 0.3])[0] == pytest.approx(
        (1 + 0.5 + 0 + 0.5) / 4
    )
    assert best_threshold([False, False, True, True], [1.0, 2.0, 3.0, 4.0]) == 3.0


def test_baselines_prefer_short_and_copied_answers() -> None:
    assert length_score("a b") > length_score("a b c d")
    assert overlap_score("the red car", "The car is red.") == 1.0
    assert overlap_score("the blue car", "The car is red.") == pytest.approx(2 / 3)


def test_halueval_slice_has_fixed_splits_and_both_answers() -> None:
    pairs = load_halueval("qa", "test", limit=5)
    assert len(pairs) == 5 and all(p["split"] == "test" for p in pairs)
    assert all(split_of(p["id"]) == "test" for p in pairs)
    assert pairs == load_halueval("qa", "test", limit=5)
    first = load_halueval("qa", limit=1)[0]
    assert first["id"] == "qa-0" and first["prompt"].startswith("Which magazine")
    summary = load_halueval("summarization", limit=1)[0]
    assert summary["prompt"] == "" and len(summary["context"]) > 500
    rows = as_responses(pairs[:2])
    assert [r["grounded"] for r in rows] == [True, False, True, False]
    assert (
        rows[1]["parent_id"] == pairs[0]["id"] and rows[1]["response"] == pairs[0]["hallucinated"]
    )
    assert "no clear licence" in dataset_card("qa", "test")
    with pytest.raises(Exception, match="unknown HaluEval set"):
        load_halueval("poetry")  # type: ignore[arg-type]


def test_judge_eval_on_halueval_reports_both_baselines(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = CliRunner().invoke(
        app,
        [
            "judge-eval",
            "overlap",
            "--data",
            "halueval:dialogue",
            "--limit",
            "30",
            "--out",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"overlap", "length"}
    assert metrics["rows"] == 60 and metrics["methods"]["length"]["pairs"] == 30
    assert "fitted on the train split" in metrics["methods"]["length"]["note"]
    report = (out / "report.md").read_text()
    assert "pairwise" in report and "RUCAIBox/HaluEval" in report
    for png in ("confusion.png", "scores.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def grounding_responder(body: dict[str, Any]) -> str:
    """Supported when the response's last word is in the context."""
    text = body["messages"][-1]["content"]
    context = text.split("[Context]\n", 1)[1].split("\n\n", 1)[0]
    response = text.split("[Response]\n", 1)[1].split("\n\n", 1)[0]
    if response == "refuse":
        return "I cannot help with that."
    word = response.split()[-1].strip(".")
    label = "supported" if word in context else "unsupported"
    return json.dumps({"claims": [{"claim": response, "label": label, "evidence": ""}]})


def test_judge_eval_of_an_llm_judge_on_a_labelled_file(tmp_path: Path) -> None:
    rows = [
        {
            "id": "1a",
            "parent_id": "1",
            "context": "Rome is in Italy.",
            "response": "In Italy.",
            "label": True,
        },
        {
            "id": "1b",
            "parent_id": "1",
            "context": "Rome is in Italy.",
            "response": "In Spain.",
            "label": False,
        },
        {
            "id": "2a",
            "parent_id": "2",
            "context": "Oslo is cold.",
            "response": "refuse",
            "label": True,
        },
        {
            "id": "2b",
            "parent_id": "2",
            "context": "Oslo is cold.",
            "response": "It is hot.",
            "label": False,
        },
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with FakeOpenAI(responder=grounding_responder) as server:
        done = CliRunner().invoke(
            app,
            [
                "judge-eval",
                "GroundingJudge",
                "--data",
                str(data),
                "--label-column",
                "label",
                "--model",
                "openai/fake",
                "--param",
                f"api_base={server.base_url}",
                "--param",
                "api_key=sk-test",
                "--param",
                "max_attempts=1",
                "--out",
                str(tmp_path / "out"),
            ],
        )
    assert done.exit_code == 0, done.output
    judge = json.loads((tmp_path / "out" / "metrics.json").read_text())["methods"]["GroundingJudge"]
    assert judge["unjudged"] == 1  # the refusal
    assert judge["confusion"] == {"tp": 1, "fn": 1, "fp": 0, "tn": 2}
    assert judge["pairwise"] == pytest.approx((1 + 0.5) / 2)
    assert "sk-test" not in (tmp_path / "out" / "report.md").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "context": "c", "label": True}) + "\n")
    failed = CliRunner().invoke(
        app, ["judge-eval", "length", "--data", str(bad), "--label-column", "label"]
    )
    assert failed.exit_code != 0 and "row 0 (id 'x') has no 'response'" in str(failed.exception)
