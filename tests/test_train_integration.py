"""The four trainers and `assay eval` from the CLI on the embedded SmolLM2-135M (slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration


def test_all_trainers_run_on_the_embedded_model_from_the_cli(tmp_path, monkeypatch):
    from assay.curate.cli import app
    from assay.models.registry import materialize, register_model, resolve_model

    converted = materialize(resolve_model("smollm2-135m"))  # the user's cached conversion
    monkeypatch.setenv("ASSAY_MODEL_CACHE", str(tmp_path / "cache"))  # a private registry
    register_model("base", converted)
    ws, runner = str(tmp_path / "ws"), CliRunner()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "\n".join(
            json.dumps(
                {
                    "id": f"p{k}",
                    "prompt": f"What is {k}+2?",
                    "chosen": str(k + 2),
                    "rejected": str(k + 3),
                }
            )
            for k in range(4)
        )
    )
    common = ["--max-steps", "1", "--batch-size", "2", "--workspace", ws]
    commands = [
        ["train", "sft", "--task", "arithmetic", "--limit", "4", "--name", "s", *common],
        [
            "train",
            "distill",
            "--task",
            "arithmetic",
            "--limit",
            "4",
            "--mode",
            "context",
            "--name",
            "c",
            *common,
        ],
        ["train", "dpo", str(pairs), "--model", "base+s", "--name", "d", *common],
        [
            "train",
            "grpo",
            "--task",
            "arithmetic",
            "--limit",
            "2",
            "--model",
            "base+s",
            "--name",
            "g",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--num-generations",
            "2",
            "--max-completion-length",
            "8",
            "--workspace",
            ws,
        ],
    ]
    for command in commands:
        if "--model" not in command:
            command += ["--model", "base"]
        done = runner.invoke(app, command)
        assert done.exit_code == 0, (command, done.output)
        assert f"registered as local/base+{command[command.index('--name') + 1]}" in done.output
    shown = runner.invoke(
        app,
        [
            "eval",
            "--model",
            "base",
            "--model",
            "base+g",
            "--task",
            "arithmetic",
            "--limit",
            "4",
            "--workspace",
            ws,
        ],
    )
    assert shown.exit_code == 0 and "| base | base+g |" in shown.output
