"""LocalExecutor: streams a source through a pipeline's stages on one machine.

The stage list is split into segments at every stage that `needs_fit` (a global pass, such
as deduplication; `segments.py`). Within a segment, batches stream through the stages and
each finished batch is committed (`segment_run.py`): its output written as a Parquet shard,
then its counts, rejects and lineage recorded in the run store.
A segment's output is the next segment's input, so a fit stage reads a complete, durable
input. That output is also kept in memory while it fits `hold_bytes` (the next segment reads
it twice: its fit, then its batches; `held.py`); beyond that, and on resume, it is read from
the shards. A fit that allows it runs beside the segment before (`fit_ahead.py`).

Resume skips every committed batch; a batch that was in flight when the process died is
redone from its input (its LLM requests come back from the request cache).

Several batches are in flight at once. A CPU-only segment runs `cpu_workers` threads (one
per core by default; `cpu_segment.py`): each takes the next batch from the source, in order,
and carries it through every stage to its shard, and a worker that finds the commit interval
passed commits while the others go on (pyarrow, polars and DuckDB release the GIL). A
segment that waits on an LLM keeps up to `max_batches_in_flight` batches awaiting it on an
event loop, its CPU stages and writes in a pool of as many threads (`llm_segment.py`).
Either way a stage's `process` must not mutate state shared between batches. Shards are
named by batch index, so output order does not depend on which batch finishes first, and
memory stays bounded by the batches in flight (plus what is held for the next segment).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from assay.curate.context import StageContext
from assay.curate.executors.cpu_segment import CpuSegmentRun
from assay.curate.executors.fit_ahead import FitAhead, FitFeed
from assay.curate.executors.held import HeldSource, Hold, HoldBudget, default_hold_bytes
from assay.curate.executors.llm_segment import LlmSegmentRun
from assay.curate.executors.segment_run import SegmentRun
from assay.curate.executors.segments import Segment, split_segments
from assay.curate.progress import Progress, QuietProgress
from assay.curate.sources import Source
from assay.curate.stage import Stage
from assay.curate.store import RunStore

# 10,000 rows keeps a batch of long documents in the tens of MB while amortising the
# per-batch commit (one DuckDB transaction and one Parquet file) to well under 1% of runtime.
DEFAULT_BATCH_SIZE = 10_000


class LocalExecutor:
    """Runs a pipeline in this process.

    `max_batches_in_flight` applies when a segment has an async (LLM) stage: several batches
    wait on the model at once while CPU stages run in worker threads. CPU-only segments run
    on `cpu_workers` threads (default: one per core; 1 runs the batches one after another in
    the calling thread), each taking the next batch from the source and carrying it through
    every stage, so memory stays about that many batches per stage.

    `hold_bytes`: a segment's output that the next segment reads (twice: its fit, then its
    batches) is also kept in memory, up to this many bytes in all (default `held.HOLD_BYTES`, at
    most a quarter of the machine's memory; 0 reads everything back from the shards). The
    shards are written either way: a resume reads them.
    """

    def __init__(
        self,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batches_in_flight: int = 4,
        cpu_workers: int | None = None,
        hold_bytes: int | None = None,
        overlap_fits: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.max_batches_in_flight = max_batches_in_flight
        self.cpu_workers = max(1, cpu_workers or os.cpu_count() or 1)
        self.hold_bytes = default_hold_bytes() if hold_bytes is None else max(0, hold_bytes)
        self.overlap_fits = overlap_fits

    def run(
        self,
        stages: list[Stage],
        source: Source,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        progress: Progress | None = None,
        no_cache: bool = False,
        keep_output: dict[str, pa.Table] | None = None,
    ) -> Path:
        """Run every segment not yet complete; return the directory of the output shards.

        `keep_output`: filled with the output tables of the run (by shard name) that fit
        the hold budget, for the caller to use after the run (the search index: they are
        not read back); a shard committed by an earlier process is not in it."""
        progress = progress or QuietProgress()
        segments = split_segments(stages)
        budget = HoldBudget(self.hold_bytes)
        current: Source = source
        created = False  # whether an earlier segment has a stage that creates rows
        fitted: FitAhead | None = None  # the next segment's fit, run alongside this one
        for segment in segments:
            last = segment.index == len(segments) - 1
            out_dir = run_dir / "output" if last else run_dir / "work" / f"seg-{segment.index}"
            out_dir.mkdir(parents=True, exist_ok=True)
            held: dict[str, pa.Table] = {}
            # the next segment's input: ids already checked, unless a stage made new ones
            next_checked = not (created or any(s.creates_rows for s in segment.stages))
            ahead = None
            if not store.segment_complete(run_id, segment.index):
                runner = self._runner(
                    segment, current, store, run_id, run_dir, out_dir, progress, no_cache
                )
                runner.scratch = not last
                runner.checked_input = segment.index > 0 and not created
                runner.fitted = fitted
                if not last:  # the next segment reads this output twice: keep what fits
                    runner.hold = Hold(budget, held)
                    ahead = self._fit_ahead(segments[segment.index + 1], runner, next_checked)
                elif keep_output is not None:  # the caller reads it once more
                    runner.hold = Hold(budget, keep_output)
                try:
                    n_batches = runner.run()
                except BaseException:
                    if ahead is not None:
                        ahead.abandon()
                    raise
                store.complete_segment(run_id, segment.index, n_batches)
            if isinstance(current, HeldSource):
                current.release()  # this segment has read its input for the last time
            # the next segment reads this one's shards (or the tables held in memory); their
            # row count is in the store
            rows = store.segment_rows(run_id, segment.index)
            current = HeldSource(out_dir, rows=rows, held=held, budget=budget)
            if ahead is not None:
                ahead.input_complete(current, n_batches)
            fitted = ahead
            created = created or any(s.creates_rows for s in segment.stages)
        return run_dir / "output"

    def _runner(
        self,
        segment: Segment,
        source: Source,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        out_dir: Path,
        progress: Progress,
        no_cache: bool,
    ) -> SegmentRun:
        """An event loop for a segment with an async (LLM) stage, worker threads otherwise."""
        if any(s.is_async for s in segment.stages):
            run_class: type[SegmentRun] = LlmSegmentRun
            in_flight = self.max_batches_in_flight
        else:
            run_class, in_flight = CpuSegmentRun, self.cpu_workers
        return run_class(
            segment,
            source,
            store,
            run_id,
            run_dir,
            out_dir,
            progress,
            no_cache,
            batch_size=self.batch_size,
            in_flight=in_flight,
        )

    def _fit_ahead(self, following: Segment, runner: SegmentRun, checked: bool) -> FitAhead | None:
        """Start the fit of `following`'s first stage on `runner`'s output as it is made,
        when the stage allows it (`Stage.fit_overlaps`) and the segment is not done yet."""
        stage = following.stages[0]
        if not (self.overlap_fits and self.cpu_workers > 1):
            return None  # one worker: one core
        if not (stage.needs_fit and stage.fit_overlaps):
            return None
        if runner.store.segment_complete(runner.run_id, following.index):
            return None
        feed = FitFeed(runner.out_dir)
        runner.feed = feed
        context = StageContext(
            runner.run_id, following.offset, stage.name, runner.store, runner.no_cache
        )
        return FitAhead(stage, feed, context, self.batch_size, checked)
