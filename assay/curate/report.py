"""Run reports: the stage funnel as a Rich table (for `assay show`) and as Markdown on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.table import Table
from rich.text import Text

from assay.curate.store import RunStore


def funnel_table(store: RunStore, run_id: str) -> Table:
    """Rows in / out / rejected per stage, top reject reasons, time, and LLM usage."""
    funnel = store.funnel(run_id)
    reasons = _reasons_by_stage(store, run_id)
    llm = any(row["requests"] for row in funnel)
    table = Table(title=Text(f"run {run_id}"))
    for header in ("#", "stage", "rows in", "rows out", "rejected", "top reasons", "seconds"):
        table.add_column(header, justify="right" if header.startswith("rows") else "left")
    if llm:
        for header in ("requests", "cached", "failed", "tokens in", "tokens out", "cost $"):
            table.add_column(header, justify="right")
    for row in funnel:
        cells = [
            str(row["stage_index"]),
            Text(row["name"]),
            f"{row['rows_in']:,}",
            f"{row['rows_out']:,}",
            f"{row['rows_rejected']:,}",
            # reasons quote row content (model output): plain text, never Rich markup
            Text("\n".join(reasons.get(row["stage_index"], []))),
            f"{row['seconds']:.2f}",
        ]
        if llm:
            cells += [
                f"{row['requests'] or 0:,}",
                f"{row['cached'] or 0:,}",
                f"{row['failed'] or 0:,}",
                f"{row['input_tokens'] or 0:,}",
                f"{row['output_tokens'] or 0:,}",
                f"{row['cost'] or 0:.4f}",
            ]
        table.add_row(*cells)
    return table


def usage_line(store: RunStore, run_id: str) -> str | None:
    """The run's LLM totals in one line, or None when it made no requests."""
    funnel = store.funnel(run_id)
    requests = sum(row["requests"] or 0 for row in funnel)
    if not requests:
        return None
    cached = sum(row["cached"] or 0 for row in funnel)
    failed = sum(row["failed"] or 0 for row in funnel)
    tokens_in = sum(row["input_tokens"] or 0 for row in funnel)
    tokens_out = sum(row["output_tokens"] or 0 for row in funnel)
    cost = sum(row["cost"] or 0 for row in funnel)
    return (
        f"LLM total: {requests:,} requests ({cached:,} from the cache, {failed:,} failed), "
        f"{tokens_in:,} tokens in, {tokens_out:,} tokens out, ${cost:.4f}"
    )


def write_report(store: RunStore, run_id: str, sample_rows: int = 5) -> Path:
    """Write `<run_dir>/report.md`: run header, funnel, reject reasons, sample output rows."""
    run = store.run(run_id)
    run_dir = Path(run["run_dir"])
    funnel = store.funnel(run_id)
    reasons = _reasons_by_stage(store, run_id)
    lines = [
        f"# assay run {run_id}",
        "",
        f"- name: {run['name']}",
        f"- status: {run['status']}",
        f"- started: {run['started_at']}, ended: {run['ended_at']}",
        f"- code version: {run['code_version']}",
        f"- output: {run_dir / 'output'}",
        "",
        "## Funnel",
        "",
        "| # | stage | rows in | rows out | rejected | seconds | requests | tokens in | "
        "tokens out | cost $ |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in funnel:
        lines.append(
            f"| {row['stage_index']} | {row['name']} | {row['rows_in']:,} | {row['rows_out']:,} "
            f"| {row['rows_rejected']:,} | {row['seconds']:.2f} | {row['requests'] or 0:,} "
            f"| {row['input_tokens'] or 0:,} | {row['output_tokens'] or 0:,} "
            f"| {row['cost'] or 0:.4f} |"
        )
    usage = usage_line(store, run_id)
    if usage:
        lines += ["", usage]
    lines += [
        "",
        "Seconds are summed over batches; batches overlap while a stage waits on a model.",
    ]
    if reasons:
        lines += ["", "## Reject reasons", ""]
        for index, texts in reasons.items():
            for text in texts:
                lines.append(f"- stage {index}: {text}")
    sample = _sample_output(run_dir / "output", sample_rows)
    if sample:
        lines += ["", f"## First {len(sample)} output rows", ""]
        for row in sample:
            lines.append("```")
            for key, value in row.items():
                text = str(value)
                lines.append(f"{key}: {text[:500]}{'...' if len(text) > 500 else ''}")
            lines.append("```")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _reasons_by_stage(store: RunStore, run_id: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in store.reject_reasons(run_id):
        out.setdefault(r["stage_index"], []).append(f"{r['n']:,} x {r['reason']}")
    return out


def _sample_output(output_dir: Path, n: int) -> list[dict[str, Any]]:
    for path in sorted(output_dir.glob("part-*.parquet")):
        table = pq.read_table(path)
        if table.num_rows:
            return table.slice(0, n).to_pylist()
    return []
