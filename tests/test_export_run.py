"""Exporting a real run (ReasoningTraces against the fake server): the three formats from the
run's output and rejects, the dataset card from the run store, `assay export-data`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from openai_server import FakeOpenAI
from test_traces_stage import SEED, N, expected_correct, problems, responder
from typer.testing import CliRunner

from assay.curate.cli import app
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.datasets.cards import ARITHMETIC
from assay.datasets.export_run import export_run
from assay.operators.traces import ReasoningTraces

SECRET = "sk-test-SECRET-4242"


@pytest.fixture
def run(workspace: Path) -> str:
    stage = ReasoningTraces(
        model="openai/teacher",
        api_base="http://127.0.0.1:1/v1",  # replaced below: the server's port is not known yet
        api_key=SECRET,
        n=N,
        seed=SEED,
        temperature=0.8,
        keep="shortest",
        max_attempts=2,
    )
    with FakeOpenAI(responder=responder) as server:
        stage.api_base = server.base_url
        result = Pipeline([stage], name="traces-export").run(
            problems(), workspace=workspace, progress="quiet"
        )
    return result.run_id


def test_export_run_writes_three_formats_with_cards(
    run: str, workspace: Path, tmp_path: Path
) -> None:
    correct = expected_correct()
    solved = [p for p, ks in correct.items() if ks]
    sft = export_run(run, tmp_path / "sft", "messages", workspace=workspace, source=ARITHMETIC)
    rows = datasets.load_dataset("parquet", data_files=str(sft.parquet), split="train")
    assert rows.num_rows == len(solved)  # keep="shortest": one trace per solved problem
    assert rows[0]["messages"][-1]["role"] == "assistant"
    # the card's header names the data files: the folder itself loads
    assert datasets.load_dataset(str(sft.root), split="train").num_rows == len(solved)

    card = sft.card.read_text()
    assert SECRET not in card
    assert '"api_key":' not in card
    assert "openai/teacher" in card and f"n={N}" in card
    assert f"samples drawn: {3 * N}" in card
    n_correct = sum(len(ks) for ks in correct.values())
    assert f"verified correct: {n_correct}" in card
    assert f"problems: 3, with at least one correct sample: {len(solved)}" in card
    assert "| 0 | 1 |" in card  # one problem (p2) with pass rate 0
    assert ARITHMETIC.licence in card
    with RunStore(workspace, read_only=True) as store:
        funnel = store.funnel(run)[0]
    assert f"| 0 | ReasoningTraces | 3 | {funnel['rows_out']} | {funnel['rows_rejected']} |" in card

    pref = export_run(run, tmp_path / "dpo", "preference", workspace=workspace, save_hf=False)
    pairs = datasets.load_dataset("parquet", data_files=str(pref.parquet), split="train")
    # every solved problem also has a wrong sample in the rejects: one pair each
    assert sorted(pairs["chosen_id"]) == sorted(f"{p}/s0" for p in solved)
    for pair in pairs:
        assert pair["chosen_id"].split("/")[0] == pair["rejected_id"].split("/")[0]
        assert int(pair["rejected_id"].rsplit("s", 1)[1]) not in correct[pair["chosen_id"][:2]]
    assert "`preference` format" in pref.card.read_text()

    pc_ = export_run(run, tmp_path / "pc", "prompt_completion", workspace=workspace)
    assert datasets.load_from_disk(str(pc_.hf)).column_names == ["id", "prompt", "completion"]


def test_assay_export_cli(run: str, workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cli = CliRunner()
    done = cli.invoke(
        app,
        [
            "export-data",
            run,
            "--out",
            str(out),
            "--format",
            "prompt_completion",
            "--plain",
            "-w",
            str(workspace),
            "--no-hf",
        ],
    )
    assert done.exit_code == 0, done.output
    assert f"-> {out / 'data' / 'train-00000-of-00001.parquet'}" in done.output
    rows = datasets.load_dataset(
        "parquet", data_files=str(out / "data" / "*.parquet"), split="train"
    )
    assert isinstance(rows[0]["prompt"], str) and rows[0]["completion"].startswith("<think>")
    assert not (out / "hf").exists()
    bad = cli.invoke(
        app, ["export-data", run, "--out", str(out), "--format", "kto", "-w", str(workspace)]
    )
    assert bad.exit_code != 0 and "unknown format 'kto'" in str(bad.exception or bad.output)
    assert json.loads(json.dumps(rows[0]))  # plain strings, nothing nested
