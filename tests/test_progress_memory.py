"""Progress output in both modes, and bounded memory while streaming a large source."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from engine_stages import EvenOnly, Upper
from rich.console import Console

from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.progress import LineProgress, RichProgress
from assay.curate.sources import Source
from assay.curate.stage import Map

ROWS = [{"text": f"row {i}", "n": i} for i in range(40)]


def test_line_mode_prints_one_line_per_stage(workspace: Path) -> None:
    stream = io.StringIO()
    Pipeline([Upper(), EvenOnly()], batch_size=7).run(
        ROWS, workspace=workspace, progress=LineProgress(stream)
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[assay] stage 0 Upper: 40 in, 40 out, 0 rejected")
    assert lines[1].startswith("[assay] stage 1 EvenOnly: 40 in, 20 out, 20 rejected")


def test_line_mode_reports_a_busy_stage_while_the_segment_runs(workspace: Path) -> None:
    stream = io.StringIO()
    Pipeline([Upper(), EvenOnly()], batch_size=10).run(
        ROWS, workspace=workspace, progress=LineProgress(stream, interval=0.0)
    )
    lines = stream.getvalue().splitlines()
    running, final = lines[:-2], lines[-2:]
    # a line for every batch each stage finished (4 batches x 2 stages), with the total
    assert len(running) == 8
    assert running[0].startswith("[assay] stage 0 Upper: 10/40 rows, kept 10,")
    assert "left" in running[0]
    assert any(
        line.startswith("[assay] stage 1 EvenOnly: 40/40 rows, kept 20,") for line in running
    )
    assert final[1].startswith("[assay] stage 1 EvenOnly: 40 in, 20 out, 20 rejected")


def test_rich_mode_shows_each_stage_with_rows_done_and_kept(workspace: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160)
    Pipeline([Upper(), EvenOnly()], batch_size=7).run(
        ROWS, workspace=workspace, progress=RichProgress(console)
    )
    text = buffer.getvalue()
    assert "0 Upper" in text and "1 EvenOnly" in text
    assert "40/40" in text and "kept 20" in text


class Counter(Source):
    """A lazily generated source of `rows` rows with ~1 KiB of text each."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def record_batches(self) -> Iterator[pa.Table]:
        for start in range(0, self.rows, 1000):
            n = min(1000, self.rows - start)
            yield pa.table(
                {
                    "n": pa.array(range(start, start + n), pa.int64()),
                    "text": pa.array(["x" * 1024] * n),
                }
            )

    def count_rows(self) -> int:
        return self.rows


# the worker threads of a CPU segment share the high-water file: overlapping truncating
# writes once left "89325680" over "102255744" (read back as 893,256,804)
HIGH_WATER_LOCK = threading.Lock()


class ArrowHighWater(Map):
    """Records the largest Arrow allocation seen (in bytes) in a file, batch by batch."""

    path: str

    def map(self, table: pa.Table) -> pa.Table:
        with HIGH_WATER_LOCK:
            peak = max(pa.total_allocated_bytes(), int(Path(self.path).read_text() or 0))
            Path(self.path).write_text(str(peak))
        return table


def streamed_peak(workspace: Path, tmp_path: Path, rows: int, batch: int, **run: Any) -> int:
    """The largest Arrow allocation while `rows` rows of ~2 KiB stream through two stages."""
    high_water = tmp_path / "peak"
    high_water.write_text("0")
    pipeline = Pipeline([Upper(), ArrowHighWater(path=str(high_water))], batch_size=batch)
    result = pipeline.run(Counter(rows), workspace=workspace, progress="quiet", **run)
    assert result.funnel()[1]["rows_out"] == rows
    return int(high_water.read_text())


def test_streaming_holds_a_few_batches_not_the_source(workspace: Path, tmp_path: Path) -> None:
    rows, batch = 200_000, 5_000
    batch_bytes = batch * 1024 * 2  # text plus its upper-cased copy
    source_bytes = rows * 1024 * 2
    peak = streamed_peak(workspace, tmp_path, rows, batch, search_index=False)
    assert peak < 8 * batch_bytes, f"peak {peak:,} bytes vs batch {batch_bytes:,}"
    assert peak < source_bytes / 5


def test_the_output_kept_for_the_search_index_stays_within_the_hold_budget(
    workspace: Path, tmp_path: Path
) -> None:
    """With the search index (the default) the run keeps its output tables for the index,
    but no more of them than `hold_bytes`: the rest is read back from the shards."""
    rows, batch = 200_000, 5_000
    batch_bytes = batch * 1024 * 2
    budget = 6 * batch_bytes
    executor = LocalExecutor(batch_size=batch, hold_bytes=budget)
    peak = streamed_peak(workspace, tmp_path, rows, batch, executor=executor)
    assert peak < 8 * batch_bytes + budget, f"peak {peak:,} bytes, budget {budget:,}"


def test_slow_stage_rates_keep_their_digits() -> None:
    """A model stage at 0.17 rows/s reads "0.17 rows/s", not "0 rows/s"."""
    import time

    from assay.curate.progress import _Tally

    tally = _Tally("Generate")
    tally.add(240, 480, 0)
    tally.started = time.perf_counter() - 1435.7
    assert tally.rate_text() == "0.17 rows/s"
    tally.started = time.perf_counter() - 2.0
    assert tally.rate_text() == "120 rows/s"
