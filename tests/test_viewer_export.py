"""`assay feedback export`: step marks into SFT examples, DPO pairs and step labels, in the
formats TRL's trainers (and `assay train sft|dpo`) read; both go through TRL 1.16's data
preparation with a tiny random model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from local_tiny_model import build_tiny_model, registered_tiny_model
from test_viewer_fixtures import LEAKED, REPO, trace_run

from assay.viewer.export import export_feedback
from assay.viewer.feedback import add_feedback
from assay.viewer.workspace import ViewerError, Workspace

ORIGINAL_P0_S1 = "Step 1: Start from 2.\nStep 2: Add 3 to get 6.\nStep 3: Check that 6 - 3 = 3."


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("export")
    ws_dir = root / "ws"
    run = trace_run(ws_dir)
    ws = Workspace(ws_dir)
    # p0/s1: step 1 wrong and corrected, after an earlier mark that said correct
    add_feedback(ws, run, "p0/s1", "p0/s1#1", "correct", "bob")
    add_feedback(ws, run, "p0/s1", "p0/s1#0", "correct", "ada")
    add_feedback(ws, run, "p0/s1", "p0/s1#1", "wrong", "ada", "Step 2: Add 3 to get 5.")
    # p1/s1: wrong with no correction (a label only)
    add_feedback(ws, run, "p1/s1", "p1/s1#2", "wrong", "ada")
    # p2/s0: every step correct (a whole verified trace)
    for k in range(3):
        add_feedback(ws, run, "p2/s0", f"p2/s0#{k}", "correct", "ada")
    # p3/s1: its original text carries a leaked key; the correction too
    add_feedback(ws, run, "p3/s1", "p3/s1#1", "wrong", "ada", f"Add 6 to get 12 (not {LEAKED})")
    return ws_dir, run


def _rows(folder: Path) -> list[dict]:
    files = sorted(str(p) for p in (folder / "data").glob("*.parquet"))
    return datasets.load_dataset("parquet", data_files=files, split="train").to_list()


def test_export_builds_sft_dpo_and_step_labels_from_the_newest_marks(marked, tmp_path) -> None:
    ws, run = marked
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "assay"),
            "feedback",
            "export",
            "--workspace",
            str(ws),
            "--out",
            str(tmp_path / "fb"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "7 marked steps (8 marks) on 4 traces" in out.stdout
    dpo = {r["id"]: r for r in _rows(tmp_path / "fb" / "dpo")}
    assert sorted(dpo) == ["p0/s1#fix1", "p3/s1#fix1"]
    pair = dpo["p0/s1#fix1"]
    assert pair["prompt"] == [{"role": "user", "content": "What is 2+3?"}]
    assert pair["chosen"] == [
        {"role": "assistant", "content": "Step 1: Start from 2.\nStep 2: Add 3 to get 5."}
    ]
    assert pair["rejected"] == [{"role": "assistant", "content": ORIGINAL_P0_S1}]
    assert pair["source_id"] == "p0/s1" and pair["run_id"] == run
    sft = {r["id"]: r for r in _rows(tmp_path / "fb" / "sft")}
    assert sorted(sft) == ["p0/s1#fix1", "p2/s0#ok", "p3/s1#fix1"]
    assert sft["p0/s1#fix1"]["completion"] == pair["chosen"]
    assert sft["p2/s0#ok"]["completion"][0]["content"].endswith(
        "Step 3: Check that 8 - 1 = 7.\nFinal answer: 8"
    )
    labels = {r["id"]: r for r in _rows(tmp_path / "fb" / "step_labels")}
    assert len(labels) == 7  # the newest mark per step; bob's older mark is history
    assert labels["p0/s1#1"]["label"] == "wrong" and labels["p0/s1#1"]["author"] == "ada"
    assert labels["p0/s1#1"]["previous_steps"] == ["Step 1: Start from 2."]
    assert labels["p1/s1#2"]["correction"] is None and labels["p2/s0#0"]["correct"] is True
    everything = "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "fb").rglob("*") if p.is_file()
    )
    assert "[redacted]" in str(dpo["p3/s1#fix1"]) and LEAKED not in str(dpo) + str(sft)
    assert LEAKED not in everything
    assert "# Step feedback: dpo" in (tmp_path / "fb" / "dpo" / "README.md").read_text()
    assert datasets.load_from_disk(str(tmp_path / "fb" / "dpo" / "hf")).num_rows == 2


def test_export_of_a_workspace_without_feedback_says_so(tmp_path) -> None:
    ws = tmp_path / "ws"
    trace_run(ws)
    with pytest.raises(ViewerError, match="no step feedback"):
        export_feedback(ws, tmp_path / "out")


def test_exports_pass_trl_sft_and_dpo_data_preparation(marked, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    ws, _ = marked
    result = export_feedback(ws, tmp_path / "fb", save_hf=False)
    tiny = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    common = dict(
        output_dir=str(tmp_path / "trainer"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        gradient_checkpointing=False,
        max_length=1024,
        dataset_num_proc=None,
    )
    dpo = datasets.load_dataset("parquet", data_files=str(result.dpo.parquet), split="train")
    prepared = DPOTrainer(
        model=model, args=DPOConfig(**common), train_dataset=dpo, processing_class=tokenizer
    ).train_dataset
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(prepared.column_names)
    first = [r for r in prepared if "2+3" in tokenizer.decode(r["prompt_ids"])][0]
    assert "get 5" in tokenizer.decode(first["chosen_ids"])
    assert "get 6" in tokenizer.decode(first["rejected_ids"])
    sft = datasets.load_dataset("parquet", data_files=str(result.sft.parquet), split="train")
    prepared = SFTTrainer(
        model=model, args=SFTConfig(**common), train_dataset=sft, processing_class=tokenizer
    ).train_dataset
    assert prepared.num_rows == 3
    labels = prepared[0]["labels"] if "labels" in prepared.column_names else None
    mask = prepared[0].get("completion_mask")
    assert (labels and labels[0] == -100) or (mask and mask[0] == 0 and any(mask))


def test_exported_feedback_trains_with_assay_train_dpo_and_sft(marked, tmp_path) -> None:
    """The export is what `assay train dpo` / `sft` take, unchanged (tiny model, one step)."""
    from typer.testing import CliRunner

    from assay.curate.cli import app

    ws, _ = marked
    export_feedback(ws, tmp_path / "fb")
    runner = CliRunner()
    with registered_tiny_model(tmp_path / "student", alias="tiny-fb"):
        for method in ("dpo", "sft"):
            done = runner.invoke(
                app,
                ["train", method, str(tmp_path / "fb" / method), "--model", "tiny-fb",
                 "--name", f"fb-{method}", "--max-steps", "1", "--batch-size", "2",
                 "--workspace", str(tmp_path / "train-ws")],
            )  # fmt: skip
            assert done.exit_code == 0, done.output
            assert f"registered as local/tiny-fb+fb-{method}" in done.output
