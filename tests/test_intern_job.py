"""The intern job end to end on small parts: the fake OpenAI server as the teacher (gold SQL
for some questions, a wrong query for the others), a tiny random model as the student."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from local_tiny_model import registered_tiny_model
from openai_server import FakeOpenAI

from assay.curate.recipes import load_job
from assay.datasets.intern_sql import task_rows
from assay.jobs.intern import InternProfile, run_intern, student_rows
from assay.jobs.intern_report import goal_lines

GOLD = {r["question"]: r["gold_sql"] for s in ("train", "heldout", "unseen") for r in task_rows(s)}


def teacher_knows(question: str) -> bool:
    return hashlib.sha256(question.encode()).digest()[0] % 2 == 0


def judge_approves(question: str) -> bool:
    return hashlib.sha256(question.encode()).digest()[1] % 3 != 0


def teacher(body: dict) -> str:
    """Answers with the gold SQL for half the questions (fixed by hash), else a wrong query.
    As the reasoning judge (a rubric request) it approves two questions in three."""
    content = body["messages"][-1]["content"]
    if "[Response]" in content:
        question = content.split("[Request]\n", 1)[1].split("\n\n", 1)[0]
        score = 5 if judge_approves(question) else 1
        return json.dumps({"rationale": "checked", "handbook": score, "question": score})
    question = body["messages"][-1]["content"].rsplit("Question: ", 1)[1].split("\n")[0]
    if teacher_knows(question):
        return f"```sql\n{GOLD[question]};\n```"
    return "SELECT -1 AS wrong;"  # no gold query returns -1


@pytest.fixture
def tiny_student(tmp_path: Path):
    with registered_tiny_model(tmp_path / "student", alias="tiny-intern"):
        yield "tiny-intern"


def test_intern_job_curates_trains_evaluates_and_reports(tmp_path: Path, tiny_student: str):
    profile = InternProfile(
        train_questions=10, samples=2, heldout=6, unseen=3, general=0, epochs=1.0,
        batch_size=4, max_new_tokens=24,
    )  # fmt: skip
    lines: list[str] = []
    with FakeOpenAI(responder=teacher) as server:
        report = run_intern(
            profile,
            teacher="openai/teacher",
            student=tiny_student,
            workspace=tmp_path / "ws",
            progress="quiet",
            log=lines.append,
            teacher_options={"api_base": server.base_url, "transport": "http"},
        )
        requests_first = sum(server.billed.values())
    text = report.read_text()
    results = json.loads((report.parent / "intern_results.json").read_text())
    by = {(r["model"], r["task"]): r for r in results}
    assert {m for m, _ in by} == {"base", "teacher", "student", "uncurated student"}
    # the teacher is right exactly on the questions it knows (greedy, long prompt)
    held = task_rows("heldout", limit=6)
    expected = sum(teacher_knows(r["question"]) for r in held) / len(held)
    assert by[("teacher", "intern-sql")]["accuracy"] == pytest.approx(expected)
    # evaluation reports each model and split as it finishes (the step runs for minutes)
    assert f"      teacher, heldout: {expected:.1%} of 6" in [line.split(" (")[0] for line in lines]
    # the local models' prompt tokens are counted (the student sees the short prompt only)
    assert 0 < by[("student", "intern-sql")]["prompt_tokens"] < 120
    # curation kept one sample per known question (the two samples are equal: deduped)
    train = task_rows("train", limit=10)
    known = sum(teacher_knows(r["question"]) for r in train)
    assert f"trained on: {known} verified samples" in text
    assert "## Goals" in text and "## Funnel" in text
    assert (report.parent / "report.html").exists()
    assert (report.parent / "training" / "loss.png").exists()
    # every run of the job (curation, each evaluation) has the viewer's search index
    runs = [r for r in (tmp_path / "ws" / "runs").iterdir() if (r / "output").exists()]
    assert len(runs) > 5
    assert all((r / "search" / "output.duckdb").exists() for r in runs)
    assert requests_first > 0


def test_the_reasoning_judge_drops_verified_rows_it_scores_low(tmp_path: Path) -> None:
    from assay.curate.pipeline import Pipeline
    from assay.datasets.intern_sql import default_database
    from assay.jobs.intern import curation_stages

    profile = InternProfile(train_questions=24, samples=1, max_new_tokens=24)
    rows = task_rows("train", limit=24)
    with FakeOpenAI(responder=teacher) as server:
        options = {"api_base": server.base_url, "transport": "http"}
        stages = curation_stages(
            profile, "openai/teacher", default_database(0), True, options,
            judge="openai/judge", judge_options=options,
        )  # fmt: skip
        run = Pipeline(stages, batch_size=8).run(rows, workspace=tmp_path, progress="quiet")
    kept = run.to_arrow().to_pylist()
    expected = {
        r["question"]
        for r in rows
        if teacher_knows(r["question"]) and judge_approves(r["question"])
    }
    assert {r["question"] for r in kept} == expected
    assert 0 < len(expected) < sum(teacher_knows(r["question"]) for r in rows)  # it cut some
    assert all(r["judge_score"] == 1.0 for r in kept)
    assert "RubricJudge" in [stage["name"] for stage in run.funnel()]


def test_student_rows_pair_the_short_prompt_with_the_extracted_sql() -> None:
    (row,) = task_rows("train", limit=1)
    row = {**row, "generation": "Here:\n```sql\nSELECT 1\n```", "id": "q/s0"}
    (out,) = student_rows([row])
    assert out["messages"][:-1] == row["student_messages"]
    assert out["messages"][-1] == {"role": "assistant", "content": "SELECT 1;"}
    assert "handbook" not in json.dumps(out).lower()


def test_goal_lines_compare_the_measured_numbers() -> None:
    def r(model: str, acc: float, tokens: float) -> dict:
        return {"model": model, "task": "intern-sql", "accuracy": acc, "prompt_tokens": tokens}

    lines = goal_lines(
        [r("base", 0.0, 40), r("teacher", 0.4, 600), r("student", 0.5, 40),
         r("uncurated student", 0.45, 40)]
    )  # fmt: skip
    assert lines[0].startswith("- [x]") and lines[1].startswith("- [x]")
    assert lines[2].startswith("- [x]")  # 50% >= 0% + 30
    assert lines[3].startswith("- [ ]")  # 50% < 45% + 10


def test_job_recipes_are_recognised_and_checked(tmp_path: Path) -> None:
    recipe = tmp_path / "job.yaml"
    recipe.write_text("name: x\njob: intern\nprofile: quick\n")
    assert load_job(recipe) == (
        "assay.jobs.intern",
        {"name": "x", "job": "intern", "profile": "quick"},
    )
    recipe.write_text("name: x\njob: intern\nsearch_index: false\n")
    assert load_job(recipe)[1]["search_index"] is False
    recipe.write_text("name: x\njob: intern\nsearch_index: nope\n")
    with pytest.raises(Exception, match="search_index must be true or false"):
        load_job(recipe)
    recipe.write_text("name: x\njob: intern\nstages: []\n")
    with pytest.raises(Exception, match="unknown key 'stages'"):
        load_job(recipe)
    recipe.write_text("name: x\nstages: [Normalize]\n")
    assert load_job(recipe) is None


def test_context_rows_give_the_teacher_the_long_prompt_and_the_student_the_short_one() -> None:
    from assay.jobs.intern import context_rows

    row = task_rows("train", limit=1)[0]
    row.update(generation="```sql\nSELECT 1\n```", sql="SELECT 1")
    out = context_rows([row])[0]
    assert out["prompt"] == row["student_messages"]
    assert out["teacher_prompt"] == row["teacher_messages"]
    assert "handbook" in json.dumps(out["teacher_prompt"]).lower()
    assert "handbook" not in json.dumps(out["prompt"]).lower()
    assert out["completion"] == "SELECT 1;"


def test_the_full_profiles_context_distilled_student_is_trained_and_evaluated(
    tmp_path: Path, tiny_student: str
) -> None:
    """The full profile adds a third student (context distillation on the curated rows):
    it is trained, evaluated on both splits and in the report's table."""
    profile = InternProfile(
        train_questions=6, samples=1, heldout=3, unseen=2, general=0, epochs=1.0,
        batch_size=4, max_new_tokens=24, context_distillation=True,
        context_max_length=4096,  # the tiny model's tokenizer splits the long prompt finer
    )  # fmt: skip
    lines: list[str] = []
    with FakeOpenAI(responder=teacher) as server:
        report = run_intern(
            profile,
            teacher="openai/teacher",
            student=tiny_student,
            workspace=tmp_path / "ws",
            progress="quiet",
            log=lines.append,
            teacher_options={"api_base": server.base_url, "transport": "http"},
            search_index=False,
        )
    results = json.loads((report.parent / "intern_results.json").read_text())
    # no run of the job wrote the viewer's search index (the default writes one per run)
    runs = list((tmp_path / "ws" / "runs").iterdir())
    assert len(runs) > 10 and not list((tmp_path / "ws" / "runs").glob("*/search"))
    context = [r for r in results if r["model"] == "context-distilled student"]
    assert sorted(r["n"] for r in context) == [2, 3]
    assert "context-distilled student" in report.read_text()
    assert any(line.startswith("      and a context-distilled student") for line in lines)


def test_an_unanswered_evaluation_question_counts_as_wrong_and_none_answered_stops(
    tmp_path: Path,
) -> None:
    """A question whose request fails for good stays in the denominator (scoring only the
    answered ones would flatter the model); when no question is answered the job stops
    with the model, the split and the first failure named."""
    from assay.datasets.intern_sql import default_database
    from assay.jobs.intern import evaluate_sql

    profile = InternProfile(heldout=6, max_new_tokens=24)
    rows = task_rows("heldout", limit=6, seed=profile.seed)
    database = default_database(profile.seed)

    def question(body: dict) -> str:
        return body["messages"][-1]["content"].rsplit("Question: ", 1)[1].split("\n")[0]

    def gold(body: dict) -> str:
        return f"```sql\n{GOLD[question(body)]};\n```"

    def refuse_the_first(key: str, attempt: int) -> str | None:
        # the server records a request's body before it picks the fault
        return "400" if question(server.bodies[-1]) == rows[0]["question"] else None

    with FakeOpenAI(responder=gold, script=refuse_the_first) as server:
        options = {"api_base": server.base_url, "transport": "http"}
        summary, answers = evaluate_sql(
            "openai/teacher", "full", "heldout", 6, profile, database, tmp_path, options
        )
    assert summary["n"] == 6 and summary["unanswered"] == 1 and len(answers) == 5
    assert summary["accuracy"] == pytest.approx(5 / 6)

    with FakeOpenAI(responder=gold, script=lambda key, attempt: "400") as server:
        options = {"api_base": server.base_url, "transport": "http"}
        with pytest.raises(RuntimeError, match=r"openai/teacher on heldout: none of 6"):
            evaluate_sql(
                "openai/teacher", "full", "heldout", 6, profile, database, tmp_path / "b", options
            )
