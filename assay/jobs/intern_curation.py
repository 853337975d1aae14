"""The intern job's curation step: the query out of each teacher answer, execution match on
the task database and its test suite, the optional reasoning judge, dedupe and
decontamination (`curation_stages`). `assay/jobs/intern.py` runs it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from assay.curate.stage import Map
from assay.datasets.intern_sql import extract_sql, task_rows, test_suite_databases
from assay.datasets.intern_sql.prompts import HANDBOOK
from assay.judges.rubric import Criterion, Rubric

if TYPE_CHECKING:
    from assay.jobs.intern import InternProfile


class ExtractSql(Map):
    """The query in each answer: a ```sql fence, else SELECT / WITH up to the first `;`.

    The verifier refuses anything but one statement, so a small model's chatter around its
    query ("SELECT ...;\n\nQuestion: ...") is cut here, explicitly, before it is judged.

    Input columns: `generation`. Output columns: `sql` (string, "" when there is none).
    """

    column: str = "generation"
    output_column: str = "sql"

    def map(self, table: pa.Table) -> pa.Table:
        values = pa.array([extract_sql(v) for v in table[self.column].to_pylist()], pa.string())
        return table.append_column(self.output_column, values)


def sql_verifier(database: Path, seed: int, drop_incorrect: bool = True) -> Any:
    """Execution match on the task database and its test suite (three more, other data): a
    wrong query that returns the gold's value by chance on one database (a count of 0 for a
    driver with no wins) fails on another, so it neither trains nor scores."""
    from assay.judges.sql import SqlExecutionVerifier

    return SqlExecutionVerifier(
        database=str(database),
        test_suite=[str(path) for path in test_suite_databases(seed)],
        column="sql",
        gold_column="gold_sql",
        drop_incorrect=drop_incorrect,
    )


SQL_RUBRIC = Rubric(
    task=(
        "A new analyst wrote a SQL query for a question about the race_results table. "
        "Judge whether the query reasons the way the team's handbook says.\n\n" + HANDBOOK
    ),
    criteria=[
        Criterion(
            name="handbook",
            description="uses the handbook's meanings: people by driver_name, teams by "
            "constructor, the statusId codes, grid and position as defined",
        ),
        Criterion(
            name="question",
            description="computes exactly what the question asks (the right aggregate, "
            "person, team and season), with no extra or missing conditions",
        ),
    ],
)


def reasoning_judge(model: str, threshold: float, options: dict[str, Any] | None = None):
    """The LLM judge of the curation step: reads each verified query (`sql`) against its
    question with `SQL_RUBRIC` and rejects those scoring below `threshold`.

    Input columns: `question`, `sql`. Output columns: `judge_score`, `judge_verdict`,
    `judge_rationale`, `judge_criteria`, `judge_error`, `judge_cost`.
    """
    from assay.judges.rubric import RubricJudge

    return RubricJudge(
        model=model,
        rubric=SQL_RUBRIC,
        prompt_column="question",
        response_column="sql",
        threshold=threshold,
        max_tokens=160,
        **(options or {}),
    )


def curation_stages(
    profile: InternProfile,
    teacher: str,
    database: Path,
    curated: bool,
    teacher_options: dict[str, Any] | None = None,
    judge: str | None = None,
    judge_options: dict[str, Any] | None = None,
) -> list:
    """The curation pipeline; `curated=False` is the ablation's (generation only).

    `teacher_options` are further `Generate` settings for the teacher (`api_base`,
    `api_key_env`, `rpm`, ...). `judge`: a model string for the reasoning judge (none: the
    execution verifier alone decides), `judge_options` its further settings.
    """
    from assay.operators.dedupe import Decontaminate, ExactDedupe
    from assay.operators.generate import Generate

    generate = Generate(
        model=teacher,
        messages_column="teacher_messages",
        n=profile.samples,
        temperature=profile.temperature,
        max_tokens=profile.max_new_tokens,
        seed=profile.seed,
        **(teacher_options or {}),
    )
    if not curated:
        return [generate]
    held_out = [r["question"] for s in ("heldout", "unseen") for r in task_rows(s)]
    judged = [reasoning_judge(judge, profile.judge_threshold, judge_options)] if judge else []
    return [
        generate,
        ExtractSql(),
        sql_verifier(database, profile.seed),
        *judged,
        ExactDedupe(columns=["question", "sql"]),
        # questions are shorter than 30 words: each is compared whole with every held-out one
        Decontaminate(columns=["question"], eval_sets={"heldout": held_out}, ngram=30),
    ]
