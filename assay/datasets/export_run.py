"""Export a finished run in a TRL format, with a dataset card written from the run store.

    >>> export_run("20261202-031500-ab12", "out/arith-sft", "messages")
    ExportPaths(root=PosixPath('out/arith-sft'), parquet=..., card=..., hf=..., rows=41)

The same from the command line: `assay export-data RUN_ID --format messages --out out/arith-sft`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from assay.datasets.cards import ExportStats, SourceInfo, dataset_card
from assay.datasets.export import ExportError, ExportPaths, Format, TraceStyle, to_trl, write_export


def export_run(
    run_id: str,
    out_dir: str | Path,
    format: Format,
    *,
    workspace: str | Path = ".assay",
    system_prompt: str | None = None,
    style: TraceStyle = "think",
    conversational: bool = True,
    pairs_per_problem: int = 1,
    save_hf: bool = True,
    source: SourceInfo | None = None,
) -> ExportPaths:
    """Export run `run_id`'s output in `format`, with a card written from the run store.

    Preference pairs take their chosen samples from the run's output and their rejected ones
    from the run's rejects whose `correct` is false (ReasoningTraces rejects wrong answers
    with every column, so nothing has to be kept twice). `source` (a `cards.SourceInfo`)
    overrides the source and licence the card infers (GSM8K, arithmetic).
    """
    from assay.curate.pipeline import RunResult
    from assay.curate.store import RunStore

    with RunStore(workspace, read_only=True) as store:
        run_dir = Path(store.run(run_id)["run_dir"])
    result = RunResult(run_id=run_id, run_dir=run_dir, workspace=Path(workspace))
    kept = result.to_arrow()
    if kept.num_rows == 0:
        raise ExportError(f"run {run_id} has no output rows to export")
    wrong = _incorrect_rejects(result)
    samples = _union(kept, wrong) if wrong is not None else kept
    table = to_trl(
        samples if format == "preference" else kept,
        format,
        system_prompt=system_prompt,
        style=style,
        conversational=conversational,
        pairs_per_problem=pairs_per_problem,
    )
    stats = _stats(format, table.num_rows, kept, wrong)
    card = dataset_card(run_id, workspace=workspace, stats=stats, source=source)
    return write_export(table, out_dir, card=card, save_hf=save_hf)


def _incorrect_rejects(result: Any) -> pa.Table | None:
    rejects = result.rejects()
    if "correct" not in rejects.column_names or rejects.num_rows == 0:
        return None
    wrong = rejects.filter(pc.invert(pc.fill_null(rejects["correct"], True)))
    return wrong.drop_columns([c for c in ("_reason", "_stage") if c in wrong.column_names])


def _union(kept: pa.Table, wrong: pa.Table) -> pa.Table:
    common = [c for c in kept.column_names if c in wrong.column_names]
    return pa.concat_tables(
        [kept.select(common), wrong.select(common)], promote_options="permissive"
    )


def _hinted(kept: pa.Table) -> int:
    """Correct episodes whose `episode` JSON lists hinted turns (ToolRollouts)."""
    if "episode" not in kept.column_names:
        return 0
    pairs = zip(kept["correct"].to_pylist(), kept["episode"].to_pylist(), strict=True)
    return sum(
        bool(correct and episode and json.loads(episode).get("hinted_turns"))
        for correct, episode in pairs
    )


def _stats(format: str, rows: int, kept: pa.Table, wrong: pa.Table | None) -> ExportStats:
    stats = ExportStats(format=format, rows=rows)
    if "parent_id" not in kept.column_names:
        return stats
    tables = [kept] + ([wrong] if wrong is not None else [])
    if "correct" in kept.column_names and "pass_rate" not in kept.column_names:
        # one row per sample, correct or not (ToolRollouts episodes): count them
        outcomes: dict[str, list[bool]] = {}
        for t in tables:
            for problem, correct in zip(
                t["parent_id"].to_pylist(), t["correct"].to_pylist(), strict=True
            ):
                outcomes.setdefault(str(problem), []).append(bool(correct))
        stats.pass_rates = [sum(v) / len(v) for v in outcomes.values()]
        stats.problems = len(outcomes)
        stats.problems_solved = sum(any(v) for v in outcomes.values())
        stats.samples = sum(len(v) for v in outcomes.values())
        stats.samples_correct = sum(sum(v) for v in outcomes.values())
        stats.samples_correct_hinted = _hinted(kept)
        return stats
    # a problem's pass rate is on each of its rows; problems with no kept row come from the
    # rejects (their rows carry the rate too)
    rates: dict[str, float] = {}
    for t in tables:
        if "pass_rate" not in t.column_names:
            continue
        for problem, rate in zip(
            t["parent_id"].to_pylist(), t["pass_rate"].to_pylist(), strict=True
        ):
            if rate is not None:
                rates.setdefault(str(problem), float(rate))
    stats.pass_rates = list(rates.values())
    stats.problems = len(rates) or len(set(kept["parent_id"].to_pylist()))
    stats.problems_solved = len(set(kept["parent_id"].to_pylist()))
    if "n_samples" in kept.column_names:
        seen: dict[str, tuple[int, int]] = {}
        for t in tables:
            for p, n, c in zip(
                t["parent_id"].to_pylist(),
                t["n_samples"].to_pylist(),
                t["n_correct"].to_pylist(),
                strict=True,
            ):
                seen.setdefault(str(p), (int(n or 0), int(c or 0)))
        stats.samples = sum(n for n, _ in seen.values())
        stats.samples_correct = sum(c for _, c in seen.values())
    return stats
