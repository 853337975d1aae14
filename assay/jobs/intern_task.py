"""The intern text-to-SQL task as evaluation tasks: `intern-sql` (held-out questions of the
training templates) and `intern-sql-unseen` (templates never trained on).

Each is a `GenerationTask`: rows, the full (teacher) and short (student) prompts, and the
`SqlExecutionVerifier` over the task database and its test suite as its verifier (the same object filters the
teacher's answers and can reward GRPO).
"""

from __future__ import annotations

from typing import Any

from assay.datasets.intern_sql import (
    default_database,
    full_prompt,
    short_prompt,
    task_rows,
    test_suite_databases,
)
from assay.train.tasks import GenerationTask, register_task


def _prompt(row: dict[str, Any], style: str) -> list[dict[str, str]]:
    if style == "full":
        return full_prompt(row["question"])
    if style == "short":
        return short_prompt(row["question"])
    raise ValueError(f"prompt style must be 'full' or 'short', got {style!r}")


def intern_task(test_split: str = "heldout") -> GenerationTask:
    """The task whose "test" rows are `test_split` ("heldout" or "unseen")."""
    from assay.judges.sql import SqlExecutionVerifier

    def rows(split: str) -> list[dict[str, Any]]:
        return task_rows("train" if split == "train" else test_split)

    return GenerationTask(
        name="intern-sql" if test_split == "heldout" else "intern-sql-unseen",
        rows=rows,
        prompt=_prompt,
        verifier=SqlExecutionVerifier(
            database=str(default_database()),
            test_suite=[str(path) for path in test_suite_databases()],
            column="generation",
            gold_column="gold_sql",
        ),
        target=lambda row: row["gold_sql"] + ";",
        max_new_tokens=64,
        gold_column="gold_sql",
    )


register_task("intern-sql", lambda: intern_task("heldout"))
register_task("intern-sql-unseen", lambda: intern_task("unseen"))
