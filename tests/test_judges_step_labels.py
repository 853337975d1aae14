"""`assay judge-eval` on the step labels `assay feedback export` writes: a StepJudge (over a
real HTTP fake LLM) and the baselines against human step labels, end to end through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI
from test_viewer_fixtures import trace_run
from typer.testing import CliRunner

from assay.curate.cli import app
from assay.viewer.feedback import add_feedback
from assay.viewer.workspace import Workspace


def step_judge(body: dict[str, Any]) -> str:
    """Wrong at the step 'Add b to get s' when start + b != s; else no wrong step."""
    text = body["messages"][-1]["content"]
    steps = re.findall(r"\[Step (\d+)\] (.*)", text)
    start = next(int(m[1]) for _, t in steps if (m := re.search(r"Start from (\d+)", t)))
    for index, t in steps:
        m = re.search(r"Add (\d+) to get (\d+)", t)
        if m and start + int(m[1]) != int(m[2]):
            return json.dumps({"first_wrong_step": int(index), "reason": f"{m[0]} is false"})
    return json.dumps({"first_wrong_step": -1, "reason": "all steps hold"})


def test_judge_eval_reads_the_step_label_export(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    run = trace_run(workspace)  # p<i>/s0 add correctly, p<i>/s1 are off by one at step 1
    ws = Workspace(workspace)
    marks = [
        ("p0/s0", 0, "correct"),
        ("p0/s0", 1, "correct"),
        ("p0/s1", 0, "correct"),
        ("p0/s1", 1, "wrong"),
        ("p1/s1", 1, "wrong"),
        ("p2/s0", 1, "correct"),
        ("p2/s0", 2, "wrong"),  # a person disagrees with the judge: it finds nothing wrong
    ]
    for row, k, label in marks:
        add_feedback(ws, run, row, f"{row}#{k}", label, "ada")
    runner = CliRunner()
    exported = runner.invoke(
        app, ["feedback", "export", "-w", str(workspace), "--out", str(tmp_path / "fb"), "--no-hf"]
    )
    assert exported.exit_code == 0, exported.output
    with FakeOpenAI(responder=step_judge) as server:
        done = runner.invoke(
            app,
            [
                "judge-eval",
                "StepJudge",
                "--data",
                str(tmp_path / "fb" / "step_labels"),
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
        # one request per trace (4 traces), not one per labelled step (7)
        assert sum(server.billed.values()) == 4
    assert done.exit_code == 0, done.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["methods"]
    judge = metrics["StepJudge"]
    # positive = labelled correct; the judge's step reward 1.0 before its first wrong step
    assert judge["confusion"] == {"tp": 4, "fn": 0, "fp": 1, "tn": 2}
    assert judge["unjudged"] == 0
    # traces with a correct and a wrong labelled step: p0/s1 ranked right, p2/s0 tied
    assert judge["pairs"] == 2 and judge["pairwise"] == pytest.approx((1 + 0.5) / 2)
    assert {"length", "overlap"} <= set(metrics)
    assert "sk-test" not in (tmp_path / "out" / "report.md").read_text()


def test_judge_eval_of_a_baseline_on_a_step_label_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "id": f"t{i}#1",
            "run_id": "r",
            "row_id": f"t{i}",
            "question": "What is 2+3?",
            "step_index": 1,
            "previous_steps": ["Start from 2."],
            "step": step,
            "label": "correct" if ok else "wrong",
            "correct": ok,
        }
        for i, (step, ok) in enumerate([("Add 3 to get 5.", True), ("Add 3 to get 6.", False)])
    ]
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    done = CliRunner().invoke(
        app, ["judge-eval", "length", "--data", str(path), "--out", str(tmp_path / "out")]
    )
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (
        report["methods"]["length"]["confusion"]["tp"]
        + report["methods"]["length"]["confusion"]["fn"]
        == 1
    )  # one step labelled correct, read from `correct`, not --label-column
