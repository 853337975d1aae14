"""LocalExecutor: streams a source through a pipeline's stages on one machine.

The stage list is split into segments at every stage that `needs_fit` (a global pass, such
as deduplication). Within a segment, batches stream through the stages and each finished
batch is committed: its output written as a Parquet shard (temporary name, then an atomic
rename; a segment's output that only the next segment reads is written uncompressed, see
`shards.py`), then its counts, rejects and lineage recorded in the run store in one
transaction (shared by the batches that finish within `COMMIT_INTERVAL_S`).
A segment's output is the next segment's input, so a fit stage reads a complete, durable
input and memory stays bounded by the batches in flight.

Resume skips every committed batch; a batch that was in flight when the process died is
redone from its input (its LLM requests come back from the request cache).

Several batches are in flight at once: up to `max_batches_in_flight` when a segment waits on
an LLM, up to `cpu_workers` (one per core by default) when it only computes. CPU stages run
in the segment's worker threads, one per batch in flight (pyarrow and polars release the
GIL), so a stage's `process` must not mutate state shared between batches. Shards are named
by batch index, so output order does not depend on which batch finishes first, and memory
stays bounded by the batches in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from assay.curate.arrays import repeat
from assay.curate.context import StageContext, current_stage
from assay.curate.errors import AssayError, StageError
from assay.curate.executors.checks import check_result, check_unchanged, fingerprint
from assay.curate.executors.shards import fsync_dir, write_atomic, write_options
from assay.curate.progress import Progress, QuietProgress
from assay.curate.sources import ParquetSource, Source, read_batches
from assay.curate.stage import ID, Outcome, Stage
from assay.curate.store import FinishedBatch, RunStore, StageCount

# Batches finishing within this interval share one DuckDB transaction (a commit costs an
# fsync and ~10 ms of CPU here); a crash loses at most this much finished work (its shards
# are on disk, but uncommitted), which a resume redoes.
COMMIT_INTERVAL_S = 1.0

# 10,000 rows keeps a batch of long documents in the tens of MB while amortising the
# per-batch commit (one DuckDB transaction and one Parquet file) to well under 1% of runtime.
DEFAULT_BATCH_SIZE = 10_000

T = TypeVar("T")


@dataclass
class Segment:
    index: int
    offset: int  # index of its first stage in the pipeline
    stages: list[Stage]


def split_segments(stages: list[Stage]) -> list[Segment]:
    """Cut the stage list before every stage that needs a global pass over its input."""
    segments: list[Segment] = []
    current: list[Stage] = []
    offset = 0
    for i, stage in enumerate(stages):
        if stage.needs_fit and current:
            segments.append(Segment(len(segments), offset, current))
            current, offset = [], i
        current.append(stage)
    segments.append(Segment(len(segments), offset, current))
    return segments


class LocalExecutor:
    """Runs a pipeline in this process.

    `max_batches_in_flight` applies when a segment has an async (LLM) stage: several batches
    wait on the model at once while CPU stages run in worker threads. CPU-only segments run
    `cpu_workers` batches at once (default: one per core; 1 runs them one after another),
    which bounds memory to about that many batches per stage.
    """

    def __init__(
        self,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batches_in_flight: int = 4,
        cpu_workers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.max_batches_in_flight = max_batches_in_flight
        self.cpu_workers = max(1, cpu_workers or os.cpu_count() or 1)

    def run(
        self,
        stages: list[Stage],
        source: Source,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        progress: Progress | None = None,
        no_cache: bool = False,
    ) -> Path:
        """Run every segment not yet complete; return the directory of the output shards."""
        progress = progress or QuietProgress()
        segments = split_segments(stages)
        current: Source = source
        created = False  # whether an earlier segment has a stage that creates rows
        for segment in segments:
            last = segment.index == len(segments) - 1
            out_dir = run_dir / "output" if last else run_dir / "work" / f"seg-{segment.index}"
            out_dir.mkdir(parents=True, exist_ok=True)
            if not store.segment_complete(run_id, segment.index):
                runner = _SegmentRun(
                    self, segment, current, store, run_id, run_dir, out_dir, progress, no_cache
                )
                runner.scratch = not last
                # an earlier segment's output: ids already checked, unless a stage made new ones
                runner.checked_input = segment.index > 0 and not created
                n_batches = run_coroutine(runner.run())
                store.complete_segment(run_id, segment.index, n_batches)
            # the next segment reads this one's shards; their row count is in the store
            current = ParquetSource(out_dir, rows=store.segment_rows(run_id, segment.index))
            created = created or any(s.creates_rows for s in segment.stages)
        return run_dir / "output"


class _SegmentRun:
    def __init__(
        self,
        executor: LocalExecutor,
        segment: Segment,
        source: Source,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        out_dir: Path,
        progress: Progress,
        no_cache: bool,
    ) -> None:
        self.segment = segment
        self.source = source
        self.store = store
        self.run_id = run_id
        self.run_dir = run_dir
        self.out_dir = out_dir
        self.progress = progress
        self.no_cache = no_cache
        self.batch_size = executor.batch_size
        self.concurrent = any(s.is_async for s in segment.stages)
        self.in_flight = executor.max_batches_in_flight if self.concurrent else executor.cpu_workers
        self.threaded = self.concurrent or self.in_flight > 1
        # one worker thread per batch in flight: stages and shard writes run there
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        # a segment's output that the next segment reads, not the run's: see shards.py
        self.scratch = False
        self.checked_input = False
        self.unsynced_dirs: set[Path] = set()
        self.write_options: dict[tuple[Path, pa.Schema], dict[str, Any]] = {}
        self.finished: list[FinishedBatch] = []
        self.last_commit = time.monotonic()

    async def run(self) -> int:
        if self.threaded:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                self.in_flight, thread_name_prefix=f"assay-seg{self.segment.index}"
            )
        try:
            return await self._run()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None

    async def _run(self) -> int:
        seg = self.segment
        for j, stage in enumerate(seg.stages):
            if stage.needs_fit:
                with _stage_context(self, seg.offset + j, stage):
                    stage.fit(self._read_input)
        done = self.store.done_batches(self.run_id, seg.index)
        total = self.source.count_rows()
        self.progress.start_segment(
            [(seg.offset + j, s.name) for j, s in enumerate(seg.stages)], total
        )
        pending: set[asyncio.Task[None]] = set()
        n_batches = 0
        try:
            batches = read_batches(
                self.source, self.batch_size, unique_ids=seg.index == 0, checked=self.checked_input
            )
            for b, table in enumerate(batches):
                n_batches = b + 1
                if b in done:
                    check_unchanged(b, table, done[b])
                    self.progress.skip(table.num_rows)
                    continue
                while len(pending) >= self.in_flight:
                    pending = await _reap(pending)
                pending.add(asyncio.create_task(self._batch(b, table)))
            while pending:
                pending = await _reap(pending)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            self.commit()  # what finished is kept, even when another batch failed
            self.progress.end_segment()
        return n_batches

    def _read_input(self) -> Iterator[pa.Table]:
        """A fresh pass over the segment's input (what a fit stage reads)."""
        return read_batches(self.source, self.batch_size, checked=self.checked_input)

    async def _batch(self, b: int, table: pa.Table) -> None:
        seg = self.segment
        counts: list[StageCount] = []
        rejects: list[pa.Table] = []
        lineage: list[pa.Table] = []
        rows_at_start = table.num_rows
        batch_fingerprint = fingerprint(table)
        # a failed earlier attempt at this batch may have left reject shards: they must not
        # outlive it (this attempt writes its own, under the same names)
        for stale in (self.run_dir / "rejects").glob(f"*/seg{seg.index}-{b:06d}.parquet"):
            stale.unlink()
        for j, stage in enumerate(seg.stages):
            index = seg.offset + j
            started = time.perf_counter()
            rows_in = table.num_rows
            n_rejected = 0
            if rows_in:
                stage.check_columns(table)
                with _stage_context(self, index, stage):
                    result = await self._call(stage, table, b)
                table, rejected, created = check_result(stage, table, result, b)
                if rejected is not None and rejected.num_rows:
                    n_rejected = rejected.num_rows
                    rejects.append(
                        await self._off_loop(self._write_rejects, index, stage, b, rejected)
                    )
                if created is not None:
                    stage_col = repeat(index, created.num_rows, pa.int32())
                    lineage.append(created.append_column("stage_index", stage_col))
            counts.append(
                StageCount(
                    index, rows_in, table.num_rows, n_rejected, time.perf_counter() - started
                )
            )
            self.progress.advance(index, rows_at_start, rows_in, table.num_rows, n_rejected)
        await self._off_loop(
            self._write_shard, table, self.out_dir / f"part-{b:06d}.parquet", self.scratch
        )
        self.finished.append(
            FinishedBatch(
                seg.index,
                b,
                batch_fingerprint,
                table.num_rows,
                counts,
                rejects=pa.concat_tables(rejects) if rejects else None,
                lineage=pa.concat_tables(lineage) if lineage else None,
            )
        )
        if time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self.commit()

    def commit(self) -> None:
        """Commit the finished batches not yet recorded (their shards are on disk already).

        The shards' folders are fsynced first: a batch the store calls done survives a power
        loss with its shard (the files themselves were fsynced before their rename).
        """
        if not self.finished:
            return
        for folder in sorted(self.unsynced_dirs):
            fsync_dir(folder)
        self.unsynced_dirs.clear()
        self.store.commit_batches(self.run_id, self.finished)
        self.finished = []
        self.last_commit = time.monotonic()

    async def _call(self, stage: Stage, table: pa.Table, b: int) -> pa.Table | Outcome:
        try:
            if stage.is_async:
                return await stage.aprocess(table)  # type: ignore[attr-defined]
            return await self._off_loop(stage.process, table)
        except AssayError:
            raise
        except Exception as exc:
            raise StageError(
                stage.name, f"failed on batch {b}: {type(exc).__name__}: {exc}"
            ) from exc

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        """Call `fn` in a worker thread when batches overlap, else inline."""
        if self.pool is not None:
            ctx = contextvars.copy_context()  # the stage context travels with the call
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, functools.partial(ctx.run, fn, *args))
        return fn(*args)

    def _write_shard(self, table: pa.Table, path: Path, scratch: bool = False) -> None:
        # the write options are judged on a folder's first shard of each schema
        key = (path.parent, table.schema)
        options = self.write_options.get(key)
        if options is None:
            options = self.write_options[key] = write_options(table, scratch)
        write_atomic(table, path, options)
        self.unsynced_dirs.add(path.parent)

    def _write_rejects(self, index: int, stage: Stage, b: int, rejected: pa.Table) -> pa.Table:
        """Keep the removed rows as Parquet; return (row_id, stage_index, stage, reason)."""
        path = (
            self.run_dir
            / "rejects"
            / f"{index:02d}-{stage.name}"
            / f"seg{self.segment.index}-{b:06d}.parquet"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_shard(rejected, path)
        n = rejected.num_rows
        return pa.table(
            {
                "row_id": rejected[ID],
                "stage_index": repeat(index, n, pa.int32()),
                "stage": repeat(stage.name, n),
                "reason": rejected["_reason"],
            }
        )


async def _reap(pending: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Wait for at least one batch; raise the first failure (after retrieving them all)."""
    finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    errors = [task.exception() for task in finished if not task.cancelled()]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        raise first
    return pending


class _stage_context:
    def __init__(self, run: _SegmentRun, index: int, stage: Stage) -> None:
        self.ctx = StageContext(run.run_id, index, stage.name, run.store, run.no_cache)

    def __enter__(self) -> None:
        self.token = current_stage.set(self.ctx)

    def __exit__(self, *exc: object) -> None:
        current_stage.reset(self.token)


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, also from inside a running event loop (Jupyter, async apps).

    There the loop's thread must not block on itself, so the run gets its own thread and loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="assay-run") as pool:
        return pool.submit(asyncio.run, coro).result()
