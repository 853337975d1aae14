"""Step feedback: a person marks a reasoning step correct or wrong, maybe with a correction.

Table `step_feedback` in the workspace's run store, append-only (a new mark on a step adds a
row; the newest row per step is its current label, the older ones stay as history):

    run_id, row_id, step_id, label ('correct' | 'wrong'), correction (text or null),
    author, created_at
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from assay.viewer.redact import redact
from assay.viewer.workspace import ViewerError, Workspace, dicts

SCHEMA = """
create table if not exists step_feedback (
    run_id varchar, row_id varchar, step_id varchar, label varchar, correction varchar,
    author varchar, created_at timestamp);
"""
LABELS = ("correct", "wrong")
MAX_AUTHOR = 80
MAX_CORRECTION = 20_000


def add_feedback(
    ws: Workspace,
    run_id: str,
    row_id: str,
    step_id: str,
    label: str,
    author: str,
    correction: str | None = None,
) -> dict[str, Any]:
    """Append one mark and return it. Secrets in the correction are redacted before storing."""
    if label not in LABELS:
        raise ViewerError(f"label must be 'correct' or 'wrong', got {label!r}")
    author = (author or "").strip()
    if not author:
        raise ViewerError("set your name first (top right): feedback records who gave it")
    if len(author) > MAX_AUTHOR:
        raise ViewerError(f"name longer than {MAX_AUTHOR} characters")
    correction = (correction or "").strip() or None
    if correction is not None and label != "wrong":
        raise ViewerError("a correction goes with a step marked wrong")
    if correction is not None and len(correction) > MAX_CORRECTION:
        raise ViewerError(f"correction longer than {MAX_CORRECTION:,} characters")
    row = {
        "run_id": run_id,
        "row_id": row_id,
        "step_id": step_id,
        "label": label,
        "correction": redact(correction) if correction else None,
        "author": redact(author),
        "created_at": datetime.now(UTC).replace(tzinfo=None),
    }
    with ws.connect(write=True) as con:
        con.execute(SCHEMA)
        con.execute("insert into step_feedback values (?, ?, ?, ?, ?, ?, ?)", list(row.values()))
    return row


def has_table(ws: Workspace) -> bool:
    return "step_feedback" in ws.tables()


def feedback_for_row(ws: Workspace, run_id: str, row_id: str) -> list[dict[str, Any]]:
    """Every mark on a row's steps, oldest first."""
    if not has_table(ws):
        return []
    return ws.query(
        "select * from step_feedback where run_id = ? and row_id = ? order by created_at",
        [run_id, row_id],
    )


def counts_by_run(ws: Workspace) -> dict[str, int]:
    if not has_table(ws):
        return {}
    rows = ws.query("select run_id, count(*) as n from step_feedback group by run_id")
    return {r["run_id"]: r["n"] for r in rows}


def latest_marks(ws: Workspace, run_id: str | None = None) -> list[dict[str, Any]]:
    """The current mark of every step (its newest row), ordered by run, row and step."""
    if not has_table(ws):
        return []
    where = "where run_id = ?" if run_id else ""
    with ws.connect() as con:
        return dicts(
            con,
            f"""select run_id, row_id, step_id,
                       arg_max(label, created_at) as label,
                       arg_max(correction, created_at) as correction,
                       arg_max(author, created_at) as author,
                       max(created_at) as created_at,
                       count(*) as marks
                from step_feedback {where}
                group by run_id, row_id, step_id
                order by run_id, row_id, step_id""",
            [run_id] if run_id else [],
        )
