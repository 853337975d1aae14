"""The intern task: enterprise-style text-to-SQL over a racing results database.

A small student should learn, from curated teacher answers, what an intern learns from the
handbook: which columns mean what and which codes stand for which events. The teacher sees
the handbook, the schema and worked examples (`full_prompt`); the student only the table
name and the question (`short_prompt`).

    >>> from assay.datasets.intern_sql import task_rows, default_database
    >>> rows = task_rows("train", limit=64)      # id, question, gold_sql, template, split,
    ...                                          # teacher_messages, student_messages
    >>> db = default_database()                  # ~/.cache/assay/tasks/intern_sql-0.duckdb
    >>> suite = test_suite_databases()           # 3 more, other data: test-suite matching

Splits (see `questions.py`): `train`, `heldout` (same templates, no shared instance) and
`unseen` (templates never trained on).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from assay.datasets.intern_sql.database import TABLE, build_database
from assay.datasets.intern_sql.prompts import (
    HANDBOOK,
    SCHEMA,
    extract_sql,
    full_prompt,
    short_prompt,
)
from assay.datasets.intern_sql.questions import questions

__all__ = [
    "HANDBOOK",
    "SCHEMA",
    "TABLE",
    "build_database",
    "default_database",
    "extract_sql",
    "full_prompt",
    "short_prompt",
    "task_rows",
    "test_suite_databases",
    "write_source",
]


def default_database(seed: int = 0) -> Path:
    """The task database for `seed`, built once under the assay cache."""
    return _cached_database(f"intern_sql-{seed}.duckdb", seed)


def _cached_database(name: str, seed: int, **variant: Any) -> Path:
    root = Path(os.environ.get("ASSAY_CACHE", Path.home() / ".cache" / "assay")) / "tasks"
    path = root / name
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        build_database(tmp, seed=seed, **variant)
        os.replace(tmp, path)
    return path


def task_rows(split: str, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Questions of `split` with both prompts as chat messages.

    Output columns: `id`, `question`, `gold_sql`, `template`, `split`, `teacher_messages`
    and `student_messages` (lists of {role, content}).
    """
    rows = questions(split, limit=limit, seed=seed)
    for row in rows:
        row["teacher_messages"] = full_prompt(row["question"])
        row["student_messages"] = short_prompt(row["question"])
    return rows


def write_source(path: str | Path, split: str, limit: int | None = None, seed: int = 0) -> Path:
    """Write `task_rows(split, limit)` as JSON Lines (a pipeline source)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in task_rows(split, limit=limit, seed=seed):
            out.write(json.dumps(row) + "\n")
    return path


def test_suite_databases(seed: int = 0, size: int = 3) -> list[Path]:
    """`size` more databases with the task's schema and other data, built to tell queries
    apart: 64 rounds a season and every driver equally fast, so every driver has wins, poles
    and accidents in almost every season. `SqlExecutionVerifier(test_suite=...)` also runs
    a query on each, so a wrong query whose count matches the gold's 0 on the task database
    (a driver with no wins that season) fails here."""
    return [
        _cached_database(f"intern_sql-suite-{seed}-{k}.duckdb", 1000 + seed + k, **SUITE_VARIANT)
        for k in range(size)
    ]


SUITE_VARIANT = {"rounds": 64, "equal_skill": True}
