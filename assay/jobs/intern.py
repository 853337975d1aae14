"""The intern job: a small student learns an enterprise text-to-SQL task from its own prompted
teacher, and curation is what makes the difference.

The steps, in the order they run (each a library call you can run alone):

1. Teacher generation: the teacher answers every training question with the long prompt
   (handbook, commented schema, worked examples), `samples` times at `temperature`.
2. Curation: execute each answer's SQL and keep those whose result set equals the gold
   query's on the task database and on a test suite of three more databases with other data
   (`SqlExecutionVerifier(test_suite=...)`); with a `judge` model, an LLM judge then reads
   each verified query against the handbook (`SQL_RUBRIC`: the handbook's meanings, exactly
   what was asked) and drops those it scores below `judge_threshold`; drop exact duplicates
   of (question, SQL); decontaminate against both held-out sets (whole-question match).
3. Training: the student (LoRA on the embedded model) learns (short prompt -> verified SQL);
   the ablation trains the same student on as many *uncurated* teacher samples; with
   `context_distillation` (a profile override) a third student learns the same rows by context
   distillation (the base model reading the long prompt is its teacher of token
   distributions).
4. Evaluation on the held-out questions and on unseen templates: base (short prompt), teacher
   (long prompt), student (short), uncurated student (short); plus the general set
   (MMLU / ARC) for base and student. Accuracy, prompt tokens per query, latency.
5. The report (`report.md`, `report.html`, plots) in the curation run's folder.

Teacher answers go through the request cache, so a second run pays for none of them.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from assay.curate.pipeline import Pipeline, RunResult
from assay.datasets.intern_sql import (
    default_database,
    extract_sql,
    task_rows,
)
from assay.jobs import intern_task  # noqa: F401  (registers the eval tasks for `assay eval`)
from assay.jobs.intern_curation import (
    SQL_RUBRIC,
    ExtractSql,
    curation_stages,
    reasoning_judge,
    sql_verifier,
)
from assay.jobs.intern_report import goal_lines, write_intern_report

TEACHER = "local/smollm2-135m"
STUDENT = "smollm2-135m"


@dataclass
class InternProfile:
    """How big a run is. `quick` is `make demo`'s (minutes on 2 cores); `full` is the one the
    README's table comes from."""

    train_questions: int = 240
    samples: int = 2
    heldout: int = 60
    unseen: int = 30
    general: int = 40  # questions per general-set task (MMLU, ARC-Easy, ARC-Challenge)
    epochs: float = 6.0
    batch_size: int = 8
    learning_rate: float = 5e-4
    max_new_tokens: int = 64
    # 0.7 gave 2-5% verified answers from the 135M teacher, 0.3 gave 22% (20 questions x 4)
    temperature: float = 0.3
    # also train a context-distilled student (the base model reading the long prompt is the
    # teacher of token distributions) on the same rows, and compare it in the report
    context_distillation: bool = False
    # tokens of the long prompt plus the answer that context distillation reads (the
    # embedded model's tokenizer: 804 + up to 64)
    context_max_length: int = 1024
    # the reasoning judge's cut (RubricJudge score in [0, 1]); used when a judge is given
    judge_threshold: float = 0.5
    seed: int = 0


PROFILES = {
    "quick": InternProfile(),
    # 6 epochs as in the quick profile: at 3 the curated student's lead over the uncurated
    # one was +7.6, at 6 +10.9 (BENCHMARKS.md). The context-distilled student is opt-in
    # (`overrides: {context_distillation: true}`): it doubles a training's time and matched
    # the sequence-level student at 3 epochs (31.3 both)
    "full": InternProfile(
        train_questions=400,
        samples=4,  # 8 doubles the teacher step (about 30 min on 2 cores)
        heldout=211,
        unseen=240,
        general=200,
        batch_size=16,
    ),  # fmt: skip
}


def profile_named(name: str, overrides: dict[str, Any] | None = None) -> InternProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    return replace(PROFILES[name], **(overrides or {}))


def student_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training rows: the student's short prompt, the teacher's SQL as the answer."""
    out = []
    for row in rows:
        sql = row.get("sql") or extract_sql(row["generation"])
        completion = (sql + ";") if sql else (row["generation"] or "").strip()
        messages = [*row["student_messages"], {"role": "assistant", "content": completion}]
        out.append({"id": row["id"], "messages": messages, "template": row["template"]})
    return out


def context_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Context-distillation rows: the student's short prompt, the teacher's long one, and the
    verified SQL as the completion both read (`assay.train.distill`, mode "context")."""
    return [
        {
            "id": row["id"],
            "prompt": row["student_messages"],
            "teacher_prompt": row["teacher_messages"],
            "completion": (row.get("sql") or extract_sql(row["generation"])) + ";",
        }
        for row in rows
    ]


def run_intern(
    profile: str | InternProfile = "quick",
    teacher: str = TEACHER,
    student: str = STUDENT,
    workspace: str | Path = ".assay",
    progress: str = "auto",
    log: Callable[[str], None] = print,
    teacher_options: dict[str, Any] | None = None,
    judge: str | None = None,
    judge_options: dict[str, Any] | None = None,
    search_index: bool = True,
) -> Path:
    """Run every step; return the report's path. `judge`: a model for the reasoning judge
    of the curation step (default none: the 135M embedded model judges at chance, so it
    would drop verified rows at random; give a stronger one, e.g. `openai/gpt-4o-mini`).
    `search_index`: write the viewer's search index at the end of each of the job's runs
    (curation and every evaluation; False skips them, as `assay run --no-search-index`)."""
    from assay.train.eval import evaluate_choices, load_eval_model, results_table
    from assay.train.parallel import TrainJob, train_concurrently
    from assay.train.tasks import get_task

    p = profile_named(profile) if isinstance(profile, str) else profile
    workspace = Path(workspace)
    database = default_database(p.seed)
    source = task_rows("train", limit=p.train_questions, seed=p.seed)
    timings: dict[str, float] = {}

    log(f"[1/4] teacher {teacher}: {len(source)} questions x {p.samples} samples (long prompt)")
    started = time.perf_counter()
    if judge:
        log(f"      the reasoning judge: {judge} (threshold {p.judge_threshold})")
    curated_run = Pipeline(
        curation_stages(p, teacher, database, True, teacher_options, judge, judge_options),
        batch_size=32,
        search_index=search_index,
    ).run(source, workspace=workspace, progress=progress)
    raw_run = Pipeline(
        curation_stages(p, teacher, database, False, teacher_options),
        batch_size=32,
        search_index=search_index,
    ).run(
        source, workspace=workspace, progress=progress
    )  # every request comes from the cache the curated run just filled
    timings["teacher and curation"] = time.perf_counter() - started
    curated = curated_run.to_arrow().to_pylist()
    raw = raw_run.to_arrow().to_pylist()
    if not curated:
        raise RuntimeError(
            "no teacher sample passed verification: raise `samples` or use a stronger --teacher"
        )
    uncurated = random.Random(p.seed).sample(raw, min(len(curated), len(raw)))
    log(f"      {len(raw)} samples, {len(curated)} verified and kept")

    log(f"[2/4] training the student on {len(curated)} curated and {len(uncurated)} uncurated")
    started = time.perf_counter()
    tag = curated_run.run_id
    options = dict(
        model=student, epochs=p.epochs, batch_size=p.batch_size, learning_rate=p.learning_rate,
        max_length=128, workspace=str(workspace), seed=p.seed, save_steps=10_000,
        progress_every_s=30.0,
    )  # fmt: skip
    jobs = []
    if p.context_distillation:
        log("      and a context-distilled student on the same curated rows")
        # the teacher's side reads the long prompt: max_length must hold it and the answer;
        # first, as the longest of the trainings (they run side by side, one per core)
        jobs.append(
            TrainJob(
                "distill",
                context_rows(curated),
                {
                    **options,
                    "mode": "context",
                    "name": f"intern-ctx-{tag}",
                    "max_length": p.context_max_length,
                },
            )
        )
    jobs += [
        TrainJob("sft", student_rows(curated), {**options, "name": f"intern-{tag}"}),
        TrainJob("sft", student_rows(uncurated), {**options, "name": f"intern-raw-{tag}"}),
    ]
    *context_fits, curated_fit, uncurated_fit = train_concurrently(jobs)
    fits = [curated_fit, uncurated_fit, *context_fits]
    timings["training"] = time.perf_counter() - started

    log("[3/4] evaluating base, teacher, student and uncurated student")
    started = time.perf_counter()
    models = {
        "base": (f"local/{student}", "short", {}),
        "teacher": (teacher, "full", teacher_options or {}),
        "student": (f"local/{curated_fit.model_name}", "short", {}),
        "uncurated student": (f"local/{uncurated_fit.model_name}", "short", {}),
    }
    if context_fits:
        models["context-distilled student"] = (f"local/{context_fits[0].model_name}", "short", {})
    results, answers = [], {}
    for label, (name, style, options) in models.items():
        for split, limit in (("heldout", p.heldout), ("unseen", p.unseen)):
            result, rows = evaluate_sql(
                name, style, split, limit, p, database, workspace, options, search_index
            )
            results.append({"model": label, **result})
            failed = f", {result['unanswered']} unanswered" if result["unanswered"] else ""
            log(
                f"      {label}, {split}: {result['accuracy']:.1%} of {result['n']} "
                f"({result['latency_s']:.2f} s/query{failed})"
            )
            answers[(label, result["task"])] = rows
    if p.general:
        for label, name in (("base", student), ("student", curated_fit.model_name)):
            model, tokenizer = load_eval_model(name)
            for general in ("mmlu", "arc-easy", "arc-challenge"):
                choice = evaluate_choices(model, tokenizer, get_task(general), p.general)
                results.append({"model": label, **choice})
                log(f"      {label}, {general}: {choice['accuracy']:.1%} of {choice['n']}")
            del model
    timings["evaluation"] = time.perf_counter() - started

    log("[4/4] report")
    report = write_intern_report(
        curated_run=curated_run,
        raw_run=raw_run,
        workspace=workspace,
        results=results,
        answers=answers,
        training_runs=[fit.run_id for fit in fits],
        train_rows=curated,
        config={"profile": asdict(p), "teacher": teacher, "student": student, "judge": judge},
        timings=timings,
    )
    log(results_table(results))
    log("\n".join(goal_lines(results)))
    log(json.dumps({"report": str(report)}))
    return report


def evaluate_sql(
    model: str,
    style: str,
    split: str,
    limit: int,
    p: InternProfile,
    database: Path,
    workspace: Path,
    options: dict[str, Any] | None = None,
    search_index: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy answers of `model` to `split`'s questions with the `style` prompt, executed and
    compared with the gold query. Runs as a pipeline, so answers are cached like any other
    request (a re-run, or the same teacher answering again, pays nothing).

    Returns the summary (accuracy, its standard error, prompt tokens and seconds per query)
    and one row per question with the answer and its verdict.
    """
    from assay.operators.generate import Generate

    column = "teacher_messages" if style == "full" else "student_messages"
    rows = task_rows(split, limit=limit, seed=p.seed)
    started = time.perf_counter()
    run = Pipeline(
        [
            Generate(
                model=model,
                messages_column=column,
                temperature=0.0,
                max_tokens=p.max_new_tokens,
                seed=p.seed,
                **(options or {}),
            ),
            ExtractSql(),
            sql_verifier(database, p.seed, drop_incorrect=False),
        ],  # fmt: skip
        name=f"eval-{split}",
        batch_size=64,
        search_index=search_index,
    ).run(rows, workspace=workspace, progress="quiet")
    seconds = time.perf_counter() - started
    out = run.to_arrow().to_pylist()
    # a question the model gave no answer to (its request failed for good) counts as wrong:
    # dropping it would score the model on an easier subset; none answered stops the job
    unanswered = len(rows) - len(out)
    if rows and not out:
        reasons = run.rejects().column("_reason").to_pylist()
        raise RuntimeError(
            f"evaluating {model} on {split}: none of {len(rows)} questions was answered "
            f"(first failure: {reasons[0] if reasons else 'unknown'})"
        )
    n = len(rows)
    accuracy = sum(r["correct"] for r in out) / n if n else 0.0
    summary = {
        "task": "intern-sql" if split == "heldout" else "intern-sql-unseen",
        "prompt_style": style,
        "n": n,
        "unanswered": unanswered,
        "accuracy": accuracy,
        "stderr": math.sqrt(accuracy * (1 - accuracy) / n) if n else 0.0,
        "prompt_tokens": sum(r["generation_input_tokens"] or 0 for r in out) / max(len(out), 1),
        "completion_tokens": sum(r["generation_output_tokens"] or 0 for r in out)
        / max(len(out), 1),
        "latency_s": seconds / max(n, 1),
        "eval_run": run.run_id,
    }
    answers = [{**r, "answer": r["generation"]} for r in out]
    return summary, answers


def run_job(config: dict[str, Any], workspace: str | Path, progress: str) -> Path:
    """Entry point for `assay run recipes/intern.yaml` (the recipe's keys as `config`)."""
    profile = profile_named(config.get("profile", "quick"), config.get("overrides"))
    return run_intern(
        profile,
        teacher=config.get("teacher", TEACHER),
        student=config.get("student", STUDENT),
        workspace=workspace,
        progress=progress,
        judge=config.get("judge"),
        search_index=config.get("search_index", True),
    )


__all__ = [
    "PROFILES",
    "SQL_RUBRIC",
    "InternProfile",
    "RunResult",
    "context_rows",
    "reasoning_judge",
    "run_intern",
    "run_job",
    "student_rows",
]
