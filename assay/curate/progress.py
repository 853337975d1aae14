"""Progress reporting: a Rich display per stage on a terminal; elsewhere (logs, CI, a piped
`make demo`) a line per busy stage every `interval` seconds and one per stage at the end.

Every stage's progress is counted in rows of the segment's input whose batch has passed the
stage, so all stages share one total and the ETA means "until the segment is done".
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichBar,
)


class Progress:
    """Receives the executor's events; the base class shows nothing."""

    def start_segment(self, stages: list[tuple[int, str]], total: int | None) -> None:
        """`stages` is (pipeline index, name) for each stage of the segment."""

    def skip(self, rows: int) -> None:
        """A batch of `rows` segment-input rows was done in an earlier attempt (resume)."""

    def advance(
        self, index: int, batch_rows: int, rows_in: int, rows_out: int, rejected: int
    ) -> None:
        """Stage `index` finished a batch of `batch_rows` segment-input rows."""

    def end_segment(self) -> None:
        pass


QuietProgress = Progress


class _Tally:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rows_in = 0
        self.rows_out = 0
        self.rejected = 0
        self.started = time.perf_counter()

    def add(self, rows_in: int, rows_out: int, rejected: int) -> None:
        self.rows_in += rows_in
        self.rows_out += rows_out
        self.rejected += rejected

    def rate(self) -> float:
        seconds = time.perf_counter() - self.started
        return self.rows_in / seconds if seconds > 0 else 0.0

    def rate_text(self) -> str:
        """Rows per second, with a decimal below 10 (a model stage makes 0.2 rows/s, not 0)."""
        rate = self.rate()
        return f"{rate:,.0f} rows/s" if rate >= 10 else f"{rate:.2g} rows/s"


class LineProgress(Progress):
    """For logs and CI: while a segment runs, a line for a stage that finished a batch at most
    every `interval` seconds (rows done of the total, kept, rate, time left), so a model stage
    that runs for minutes is not silent; then one line per stage when the segment ends."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.tallies: dict[int, _Tally] = {}

    def start_segment(self, stages: list[tuple[int, str]], total: int | None) -> None:
        self.tallies = {i: _Tally(name) for i, name in stages}
        self.done = {i: 0 for i, _ in stages}
        self.total = total
        self.skipped = 0
        self.last_line = time.perf_counter()

    def skip(self, rows: int) -> None:
        self.skipped += rows

    def advance(
        self, index: int, batch_rows: int, rows_in: int, rows_out: int, rejected: int
    ) -> None:
        tally = self.tallies[index]
        tally.add(rows_in, rows_out, rejected)
        self.done[index] += batch_rows
        now = time.perf_counter()
        if now - self.last_line < self.interval:
            return
        self.last_line = now
        done, seconds = self.done[index], now - tally.started
        of = f"/{self.total - self.skipped:,}" if self.total is not None else ""
        left = ""
        if self.total is not None and done:
            remaining = (self.total - self.skipped - done) * seconds / done
            left = f", about {remaining:.0f}s left"
        print(
            f"[assay] stage {index} {tally.name}: {done:,}{of} rows, kept {tally.rows_out:,}, "
            f"{tally.rate_text()}{left}",
            file=self.stream,
            flush=True,
        )

    def end_segment(self) -> None:
        if self.skipped:
            print(
                f"[assay] {self.skipped:,} rows were done by an earlier attempt",
                file=self.stream,
                flush=True,
            )
        for index, t in self.tallies.items():
            seconds = time.perf_counter() - t.started
            print(
                f"[assay] stage {index} {t.name}: {t.rows_in:,} in, {t.rows_out:,} out, "
                f"{t.rejected:,} rejected, {seconds:.1f}s ({t.rate_text()})",
                file=self.stream,
                flush=True,
            )


class RichProgress(Progress):
    """A live bar per stage with rows done / total, rate and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bar: RichBar | None = None
        self.tasks: dict[int, TaskID] = {}
        self.tallies: dict[int, _Tally] = {}

    def start_segment(self, stages: list[tuple[int, str]], total: int | None) -> None:
        self.bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[kept]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.bar.start()
        self.tallies = {i: _Tally(name) for i, name in stages}
        self.tasks = {
            i: self.bar.add_task(f"{i} {name}", total=total, kept="", rate="") for i, name in stages
        }

    def skip(self, rows: int) -> None:
        if self.bar:
            for task in self.tasks.values():
                self.bar.advance(task, rows)

    def advance(
        self, index: int, batch_rows: int, rows_in: int, rows_out: int, rejected: int
    ) -> None:
        tally = self.tallies[index]
        tally.add(rows_in, rows_out, rejected)
        rate = tally.rate_text()
        if self.bar:
            self.bar.update(
                self.tasks[index], advance=batch_rows, kept=f"kept {tally.rows_out:,}", rate=rate
            )

    def end_segment(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None


def make_progress(mode: str = "auto") -> Progress:
    """`auto` (Rich on a terminal, lines otherwise), `rich`, `lines` or `quiet`."""
    if mode not in ("auto", "rich", "lines", "quiet"):
        raise ValueError(f"unknown progress mode {mode!r}: use auto, rich, lines or quiet")
    if mode == "quiet":
        return QuietProgress()
    if mode == "rich" or (mode == "auto" and sys.stderr.isatty()):
        return RichProgress()
    return LineProgress()
