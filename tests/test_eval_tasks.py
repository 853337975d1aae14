"""Evaluation: tasks and their splits, generation and multiple-choice scoring, the refusal to
evaluate an untrained adapter as if it were trained, the run-store records and the CLI."""

from __future__ import annotations

import pytest
import torch
from local_tiny_model import registered_tiny_model
from typer.testing import CliRunner

from assay.train.runner import TrainingSignalError
from assay.train.tasks import arithmetic_rows, get_task


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with registered_tiny_model(tmp_path_factory.mktemp("eval")) as root:
        yield root


def test_arithmetic_task_splits_prompts_and_verifier():
    task = get_task("arithmetic")
    test, train = arithmetic_rows("test"), arithmetic_rows("train")
    assert len(test) == 200 and len(train) > 500
    assert not {r["question"] for r in test} & {r["question"] for r in train}
    row = test[0]
    short, full = task.prompt(row, "short"), task.prompt(row, "full")
    assert short == [{"role": "user", "content": row["question"]}]
    assert full[0]["role"] == "system" and full[-1] == short[0] and len(full) > 3
    assert task.verifier.check(f"It is {row['answer']}.", row["answer"], row).correct
    assert not task.verifier.check(str(row["answer"] + 1), row["answer"], row).correct
    assert task.verifier.reward([None], ["12"], answer=[12]) == [1.0]
    with pytest.raises(KeyError, match="known"):
        get_task("nope")


def test_arc_query_parsing():
    from assay.datasets.arc import parse_query

    question, options = parse_query(
        "Question: Which is a gas?\n A. ice\n B. steam\n C. rock\nAnswer:"
    )
    assert question == "Which is a gas?" and options == ["ice", "steam", "rock"]


def test_choice_scores_are_per_character_log_likelihoods(tiny):
    from assay.models.registry import load_model
    from assay.train.eval import choice_scores

    model, tok = load_model("tiny", device="cpu")
    context, conts = "The quick brown", [" fox", " dog jumps over", " a"]
    got = choice_scores(model, tok, context, conts)
    assert len({round(g, 6) for g in got}) == 3
    for cont, score in zip(conts, got, strict=True):
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        ids = ctx + tok(cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        total = sum(float(logp[p - 1, ids[p]]) for p in range(len(ctx), len(ids)))
        assert score == pytest.approx(total / len(cont), rel=1e-4)


def test_untrained_adapter_is_refused_not_evaluated_as_the_base(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from assay.models.registry import register_adapter, resolve_model
    from assay.train.eval import load_eval_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny").source)
    fresh = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))  # B = 0
    fresh.save_pretrained(tiny / "fresh")
    register_adapter("fresh", tiny / "fresh", base="tiny")
    with pytest.raises(TrainingSignalError, match="answer exactly like the base model"):
        load_eval_model("tiny+fresh")


def test_evaluate_side_by_side_stored_and_cli(tiny, tmp_path):
    from assay.curate.cli import app
    from assay.curate.store import RunStore
    from assay.train.eval import evaluate, results_table
    from assay.train.report import write_report

    ws = str(tmp_path / "ws")
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "train",
            "sft",
            "--task",
            "arithmetic",
            "--limit",
            "8",
            "--model",
            "tiny",
            "--name",
            "cli",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--workspace",
            ws,
        ],
    )
    assert done.exit_code == 0, done.output
    assert "registered as local/tiny+cli" in done.output
    results = evaluate(["tiny", "tiny+cli"], ["arithmetic"], "full", limit=4, workspace=ws)
    short = evaluate(["tiny"], ["arithmetic"], "short", limit=4, workspace=ws)
    assert [r["model"] for r in results] == ["tiny", "tiny+cli"]
    assert all(r["n"] == 4 and 0 <= r["accuracy"] <= 1 for r in results)
    assert results[0]["prompt_tokens"] > short[0]["prompt_tokens"]
    assert results[0]["completion_tokens"] > 0
    table = results_table(results)
    assert table.splitlines()[0].startswith("| task | n | tiny | tiny+cli |")
    with RunStore(ws) as store:
        stored = store.con.execute(
            "select model, task, prompt_style, n from eval_results order by prompt_style, model"
        ).fetchall()
    assert stored == [
        ("tiny", "arithmetic", "full", 4),
        ("tiny+cli", "arithmetic", "full", 4),
        ("tiny", "arithmetic", "short", 4),
    ]
    shown = runner.invoke(
        app, ["eval", "--model", "tiny", "--task", "arithmetic", "--limit", "2", "--workspace", ws]
    )
    assert shown.exit_code == 0 and "| arithmetic (full) | 2 |" in shown.output
    with RunStore(ws) as store:
        run_id = store.runs()[-1]["run_id"]
    summary = runner.invoke(app, ["show", run_id, "--workspace", ws])
    assert summary.exit_code == 0, summary.output
    assert "training: sft on tiny" in summary.output
    assert "registered as: tiny+cli" in summary.output
    report = write_report(tmp_path / "rep", "t", results, [run_id], {"tiny": "base"}, ws)
    text = report.read_text()
    assert "base: tiny" in text and "![loss curve](loss.png)" in text
    assert (tmp_path / "rep" / "accuracy.png").stat().st_size > 1000
    assert "<table>" in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.integration
def test_general_set_subsets_from_the_wheel():
    from assay.datasets.arc import arc_questions
    from assay.datasets.mmlu import mmlu_questions, subjects

    assert len(subjects()) == 57
    mmlu = mmlu_questions(per_subject=1)
    assert len(mmlu) == 57 and all(0 <= r["gold"] < len(r["choices"]) for r in mmlu)
    assert mmlu == mmlu_questions(per_subject=1)  # fixed, seeded
    arc = arc_questions("challenge", n=20)
    assert len(arc) == 20 and all(len(r["choices"]) >= 3 for r in arc)
