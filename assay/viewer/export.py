"""`assay feedback export`: step feedback into training data in TRL's formats.

For each reasoning trace (a row with `steps`) that people marked, the current mark of each
step (its newest) decides what the trace yields. Steps before the first step marked wrong
are taken as accepted (the person read past them):

- `sft/` (prompt / completion, conversational): the question, then the accepted steps and
  the corrected step, for every trace whose first wrong step has a correction; and the whole
  trace with its final answer for traces whose steps are all marked correct.
- `dpo/` (prompt / chosen / rejected, conversational): the accepted steps plus the
  correction (chosen) against the accepted steps plus the original steps from the wrong one
  on (rejected). The shared prefix sits in both answers, so it cancels out of DPO's
  log-ratio: the pair teaches exactly the corrected step against the original continuation.
- `step_labels/`: one row per marked step (`question`, `previous_steps`, `step`, `label`,
  `correct`, `correction`, `author`, ...), to train or calibrate a step judge.

Each folder is an assay export (assay.datasets.export.write_export): `data/*.parquet`, a
dataset card `README.md` and `hf/` (datasets.save_to_disk); `assay train sft|dpo` take the
folder. Every string is redacted of secrets on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from assay.datasets.export import MESSAGE, ExportPaths, write_export
from assay.viewer.feedback import latest_marks
from assay.viewer.redact import redact_value
from assay.viewer.rows import PROMPT_COLUMNS, steps_of
from assay.viewer.workspace import ViewerError, Workspace

TURNS = pa.list_(MESSAGE)


@dataclass
class FeedbackExport:
    sft: ExportPaths | None
    dpo: ExportPaths | None
    step_labels: ExportPaths | None
    traces: int
    steps: int  # steps with a mark
    marks: int  # every mark, older ones included


def _rows_by_id(ws: Workspace, run_id: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    files = ws.output_files(run_id)
    if not files:
        return {}
    with duckdb.connect() as con:
        cur = con.execute(
            "select * from read_parquet($files, union_by_name = true) "
            "where id in (select unnest($ids::varchar[]))",
            {"files": files, "ids": ids},
        )
        names = [d[0] for d in cur.description]
        return {r[names.index("id")]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def _question(row: dict[str, Any]) -> str:
    for col in PROMPT_COLUMNS:
        if row.get(col):
            return str(row[col])
    raise ViewerError(
        f"row {row.get('id')!r} has no question column ({', '.join(PROMPT_COLUMNS)}): "
        "cannot build a prompt for its feedback"
    )


def _user(text: str, system_prompt: str | None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*turns, {"role": "user", "content": text}]


def _assistant(texts: list[str]) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": "\n".join(t.strip() for t in texts)}]


def collect(
    ws: Workspace, run_id: str | None = None, system_prompt: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The three datasets as lists of rows (see the module docstring)."""
    marks = latest_marks(ws, run_id)
    by_row: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for m in marks:
        by_row.setdefault((m["run_id"], m["row_id"]), {})[m["step_id"]] = m
    sft: list[dict[str, Any]] = []
    dpo: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    runs = sorted({r for r, _ in by_row})
    for run in runs:
        wanted = sorted(row_id for r, row_id in by_row if r == run)
        rows = _rows_by_id(ws, run, wanted)
        for row_id in wanted:
            row = rows.get(row_id)
            if row is None:
                raise ViewerError(f"feedback names row {row_id!r} of run {run}, not in its output")
            steps = steps_of(row)
            row_marks = by_row[(run, row_id)]
            question = _question(row)
            prompt = _user(question, system_prompt)
            texts = [s["text"] for s in steps]
            for k, step in enumerate(steps):
                m = row_marks.get(step["step_id"])
                if m is None:
                    continue
                labels.append(
                    {
                        "id": step["step_id"],
                        "run_id": run,
                        "row_id": row_id,
                        "question": question,
                        "step_index": k,
                        "previous_steps": texts[:k],
                        "step": step["text"],
                        "label": m["label"],
                        "correct": m["label"] == "correct",
                        "correction": m["correction"],
                        "author": m["author"],
                        "created_at": str(m["created_at"]),
                    }
                )
            wrong = [
                k
                for k, s in enumerate(steps)
                if row_marks.get(s["step_id"], {}).get("label") == "wrong"
            ]
            if wrong:
                k = wrong[0]
                correction = row_marks[steps[k]["step_id"]]["correction"]
                if not correction:
                    continue  # a wrong step with no correction: a label, not an example
                chosen = _assistant([*texts[:k], correction])
                sft.append(
                    {
                        "id": f"{row_id}#fix{k}",
                        "source_id": row_id,
                        "run_id": run,
                        "prompt": prompt,
                        "completion": chosen,
                    }
                )
                dpo.append(
                    {
                        "id": f"{row_id}#fix{k}",
                        "source_id": row_id,
                        "run_id": run,
                        "prompt": prompt,
                        "chosen": chosen,
                        # the accepted steps, then the original from the wrong step on
                        "rejected": _assistant(texts),
                    }
                )
            elif steps and all(
                row_marks.get(s["step_id"], {}).get("label") == "correct" for s in steps
            ):
                answer = row.get("final_answer")
                full = texts + ([f"Final answer: {answer}"] if answer else [])
                sft.append(
                    {
                        "id": f"{row_id}#ok",
                        "source_id": row_id,
                        "run_id": run,
                        "prompt": prompt,
                        "completion": _assistant(full),
                    }
                )
    return {
        "sft": redact_value(sft),
        "dpo": redact_value(dpo),
        "step_labels": redact_value(labels),
        "_marks": [
            {"steps": len(marks), "marks": sum(m["marks"] for m in marks), "traces": len(by_row)}
        ],
    }


def _table(rows: list[dict[str, Any]], turn_columns: tuple[str, ...]) -> pa.Table:
    columns = list(rows[0])
    arrays = {}
    for c in columns:
        values = [r[c] for r in rows]
        if c in turn_columns:
            arrays[c] = pa.array(values, TURNS)
        elif c == "previous_steps":
            arrays[c] = pa.array(values, pa.list_(pa.string()))
        else:
            arrays[c] = pa.array(values)
    return pa.table(arrays)


def _card(kind: str, rows: int, workspace: Path, run_id: str | None) -> str:
    what = {
        "sft": "prompt / completion (conversational): the accepted steps and the corrected step",
        "dpo": "prompt / chosen / rejected (conversational): corrected vs original continuation",
        "step_labels": "one row per human-marked reasoning step (label correct | wrong)",
    }[kind]
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
        f"    path: data/train-*.parquet\n---\n# Step feedback: {kind}\n\n"
        f"{what}.\n\n- rows: {rows}\n- from: step feedback in {workspace.name}"
        f"{f', run {run_id}' if run_id else ''} (`assay feedback export`)\n"
        "- written by people in `assay view`; each row keeps `run_id` and the row id it "
        "came from, so it traces back through the run store.\n"
    )


def export_feedback(
    workspace: str | Path,
    out_dir: str | Path,
    run_id: str | None = None,
    system_prompt: str | None = None,
    save_hf: bool = True,
) -> FeedbackExport:
    """Write `out_dir/sft`, `out_dir/dpo` and `out_dir/step_labels` (those with rows)."""
    ws = Workspace(workspace)
    data = collect(ws, run_id, system_prompt)
    if not data["step_labels"]:
        where = f"run {run_id}" if run_id else str(ws.root)
        raise ViewerError(f"no step feedback in {where}: mark steps in `assay view` first")
    out = Path(out_dir)
    written: dict[str, ExportPaths | None] = {}
    turns = {
        "sft": ("prompt", "completion"),
        "dpo": ("prompt", "chosen", "rejected"),
        "step_labels": (),
    }
    for kind, cols in turns.items():
        rows = data[kind]
        written[kind] = (
            write_export(
                _table(rows, cols),
                out / kind,
                card=_card(kind, len(rows), ws.root, run_id),
                save_hf=save_hf,
            )
            if rows
            else None
        )
    stats = data["_marks"][0]
    return FeedbackExport(
        written["sft"],
        written["dpo"],
        written["step_labels"],
        stats["traces"],
        stats["steps"],
        stats["marks"],
    )
