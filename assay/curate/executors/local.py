"""LocalExecutor: streams a source through a pipeline's stages on one machine.

The stage list is split into segments at every stage that `needs_fit` (a global pass, such
as deduplication). Within a segment, batches stream through the stages and each finished
batch is committed: its output written as a Parquet shard (temporary name, then an atomic
rename; a segment's output that only the next segment reads is written uncompressed, see
`shards.py`), then its counts, rejects and lineage recorded in the run store in one
transaction (shared by the batches that finish within `COMMIT_INTERVAL_S`).
A segment's output is the next segment's input, so a fit stage reads a complete, durable
input. That output is also kept in memory while it fits `hold_bytes` (the next segment reads
it twice: its fit, then its batches); beyond that, and on resume, it is read from the shards.

Resume skips every committed batch; a batch that was in flight when the process died is
redone from its input (its LLM requests come back from the request cache).

Several batches are in flight at once. A CPU-only segment runs `cpu_workers` threads (one
per core by default): each takes the next batch from the source, in order, and carries it
through every stage to its shard, and a worker that finds the commit interval passed commits
while the others go on (pyarrow, polars and DuckDB release the GIL). A segment that waits on
an LLM keeps up to `max_batches_in_flight` batches awaiting it on an event loop, its CPU
stages and writes in a pool of as many threads. Either way a stage's `process` must not
mutate state shared between batches. Shards are named by batch index, so output order does
not depend on which batch finishes first, and memory stays bounded by the batches in flight
(plus what is held for the next segment).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import os
import queue
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from assay.curate.arrays import repeat
from assay.curate.context import StageContext, current_stage
from assay.curate.errors import AssayError, SourceError, StageError
from assay.curate.executors.checks import check_result, check_unchanged, fingerprint
from assay.curate.executors.shards import (
    fsync_dir,
    publish,
    write_options,
    write_pending,
)
from assay.curate.progress import Progress, QuietProgress
from assay.curate.sources import ParquetSource, Source, read_batches
from assay.curate.stage import ID, Outcome, Stage
from assay.curate.store import BatchFingerprint, FinishedBatch, RunStore, StageCount

if TYPE_CHECKING:  # asyncio is imported when a segment awaits an LLM (it costs ~30 ms)
    import asyncio

# Batches finishing within this interval share one DuckDB transaction (a commit costs an
# fsync and ~10 ms of CPU here); a crash loses at most this much finished work (its shards
# are on disk, but uncommitted), which a resume redoes.
COMMIT_INTERVAL_S = 1.0

# 10,000 rows keeps a batch of long documents in the tens of MB while amortising the
# per-batch commit (one DuckDB transaction and one Parquet file) to well under 1% of runtime.
DEFAULT_BATCH_SIZE = 10_000

# A segment's output that the next segment reads is also kept in memory up to this many bytes
# (reading it back costs a Parquet decode per pass, and a fit stage makes two passes).
HOLD_BYTES = 1 << 30

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
    on `cpu_workers` threads (default: one per core; 1 runs the batches one after another in
    the calling thread), each taking the next batch from the source and carrying it through
    every stage, so memory stays about that many batches per stage.

    `hold_bytes`: a segment's output that the next segment reads (twice: its fit, then its
    batches) is also kept in memory, up to this many bytes in all (default `HOLD_BYTES`, at
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
    ) -> Path:
        """Run every segment not yet complete; return the directory of the output shards."""
        progress = progress or QuietProgress()
        segments = split_segments(stages)
        budget = _Budget(self.hold_bytes)
        current: Source = source
        created = False  # whether an earlier segment has a stage that creates rows
        fitted: _FitAhead | None = None  # the next segment's fit, run alongside this one
        for segment in segments:
            last = segment.index == len(segments) - 1
            out_dir = run_dir / "output" if last else run_dir / "work" / f"seg-{segment.index}"
            out_dir.mkdir(parents=True, exist_ok=True)
            held: dict[str, pa.Table] = {}
            # the next segment's input: ids already checked, unless a stage made new ones
            next_checked = not (created or any(s.creates_rows for s in segment.stages))
            ahead = None
            if not store.segment_complete(run_id, segment.index):
                runner = _SegmentRun(
                    self, segment, current, store, run_id, run_dir, out_dir, progress, no_cache
                )
                runner.scratch = not last
                runner.checked_input = segment.index > 0 and not created
                runner.fitted = fitted
                if not last:  # the next segment reads this output twice: keep what fits
                    runner.hold = _Hold(budget, held)
                    ahead = self._fit_ahead(segments[segment.index + 1], runner, next_checked)
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

    def _fit_ahead(
        self, following: Segment, runner: _SegmentRun, checked: bool
    ) -> _FitAhead | None:
        """Start the fit of `following`'s first stage on `runner`'s output as it is made,
        when the stage allows it (`Stage.fit_overlaps`) and the segment is not done yet."""
        stage = following.stages[0]
        if not (self.overlap_fits and self.cpu_workers > 1):
            return None  # one worker: one core
        if not (stage.needs_fit and stage.fit_overlaps):
            return None
        if runner.store.segment_complete(runner.run_id, following.index):
            return None
        feed = _FitFeed(runner.out_dir)
        runner.feed = feed
        context = StageContext(
            runner.run_id, following.offset, stage.name, runner.store, runner.no_cache
        )
        return _FitAhead(stage, feed, context, self.batch_size, checked)


def default_hold_bytes() -> int:
    """`HOLD_BYTES`, or a quarter of the machine's memory when that is less."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return HOLD_BYTES
    return min(HOLD_BYTES, memory // 4)


class _Budget:
    """Bytes of segment output held in memory, shared by the segments of a run."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


class _Hold:
    """Where a segment keeps the output tables the next segment will read (by shard name)."""

    def __init__(self, budget: _Budget, tables: dict[str, pa.Table]) -> None:
        self.budget = budget
        self.tables = tables
        self.lock = threading.Lock()

    def add(self, name: str, table: pa.Table) -> bool:
        """Hold `table` if it fits the budget; whether it does."""
        if not self.budget.take(table.get_total_buffer_size()):
            return False
        with self.lock:
            self.tables[name] = table
        return True


class HeldSource(ParquetSource):
    """A segment's output shards, read from memory where the segment held them.

    `held` maps a shard's file name to the table written to it (the same rows, so batches,
    fingerprints and results are those of reading the shards)."""

    def __init__(
        self,
        path: Path,
        rows: int | None,
        held: dict[str, pa.Table],
        budget: _Budget,
    ) -> None:
        super().__init__(path, rows=rows)
        self.held = held
        self.budget = budget

    def record_batches(self) -> Iterator[pa.RecordBatch | pa.Table]:
        for file in self.files():
            table = self.held.get(file.name) if file.parent == self.path else None
            if table is not None:
                yield table
                continue
            try:
                yield from pq.ParquetFile(file).iter_batches(batch_size=65536)
            except (pa.ArrowException, OSError) as exc:
                raise SourceError(f"cannot read Parquet file {str(file)!r}: {exc}") from exc

    def release(self) -> None:
        """Drop the held tables (the next reads come from the shards)."""
        held = sum(t.get_total_buffer_size() for t in self.held.values())
        self.held.clear()
        self.budget.give(held)


class _FitFeed:
    """A segment's output batches in batch order, as the segment makes them: the input of
    the next segment's fit while this one runs. A batch comes as the table itself (held in
    memory) or as its shard, read once it is published (or committed by an earlier run)."""

    ON_DISK = None

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.cond = threading.Condition()
        self.ready: dict[int, pa.Table | None] = {}
        self.next = 0  # the next batch the fit reads
        self.count: int | None = None  # batches in all, once the segment is done
        self.abandoned = False

    def put(self, b: int, table: pa.Table) -> None:
        with self.cond:
            self.ready[b] = table
            self.cond.notify_all()

    def on_disk(self, b: int) -> None:
        with self.cond:
            if b >= self.next and b not in self.ready:
                self.ready[b] = self.ON_DISK
                self.cond.notify_all()

    def end(self, count: int) -> None:
        """The segment is done with `count` batches: every shard is on disk now, so a batch
        not handed over yet is read from there."""
        with self.cond:
            self.count = count
            for b in range(self.next, count):
                self.ready.setdefault(b, self.ON_DISK)
            self.cond.notify_all()

    def abandon(self) -> None:
        with self.cond:
            self.abandoned = True
            self.cond.notify_all()

    def tables(self) -> Iterator[pa.RecordBatch | pa.Table]:
        while True:
            with self.cond:
                while not self.abandoned and self.next not in self.ready:
                    if self.count is not None and self.next >= self.count:
                        return
                    self.cond.wait()
                if self.abandoned:
                    raise _Abandoned
                b = self.next
                table = self.ready.pop(b)
                self.next += 1
            if table is not None:
                yield table
                continue
            path = self.out_dir / f"part-{b:06d}.parquet"
            try:
                yield from pq.ParquetFile(path).iter_batches(batch_size=65536)
            except (pa.ArrowException, OSError) as exc:
                raise SourceError(f"cannot read Parquet file {str(path)!r}: {exc}") from exc


class _FeedSource(Source):
    def __init__(self, feed: _FitFeed) -> None:
        self.feed = feed

    def record_batches(self) -> Iterator[pa.RecordBatch | pa.Table]:
        return self.feed.tables()


class _FitAhead:
    """The fit of a segment's first stage, run in a thread of its own while the previous
    segment makes its input: its first pass reads the batches as they are finished; a
    second pass, if it makes one, waits for the whole input."""

    def __init__(
        self,
        stage: Stage,
        feed: _FitFeed,
        context: StageContext,
        batch_size: int,
        checked: bool,
    ) -> None:
        self.stage = stage
        self.feed = feed
        self.context = context
        self.batch_size = batch_size
        self.checked = checked
        self.complete = threading.Event()
        self.source: Source | None = None
        self.error: BaseException | None = None
        self.passes = 0
        self.thread = threading.Thread(target=self._fit, name="assay-fit-ahead", daemon=True)
        self.thread.start()

    def _read_input(self) -> Iterator[pa.Table]:
        self.passes += 1
        if self.passes == 1:
            source: Source = _FeedSource(self.feed)
        else:
            self.complete.wait()
            assert self.source is not None
            source = self.source
        return read_batches(source, self.batch_size, checked=self.checked)

    def _fit(self) -> None:
        token = current_stage.set(self.context)
        try:
            self.stage.fit(self._read_input)
        except BaseException as exc:  # raised in the executor's thread by `wait`
            self.error = exc
        finally:
            current_stage.reset(token)

    def input_complete(self, source: Source, batches: int) -> None:
        """The previous segment is done: its batch count ends the first pass; `source`
        serves a second one."""
        self.source = source
        self.feed.end(batches)
        self.complete.set()

    def abandon(self) -> None:
        """The previous segment failed: stop the fit."""
        self.feed.abandon()
        self.complete.set()
        self.thread.join()

    def wait(self) -> None:
        """Wait for the fit; raise its error (as a fit run in place would)."""
        self.thread.join()
        if self.error is not None:
            raise self.error


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
        # LLM segments: one worker thread per batch in flight runs their CPU stages and
        # shard writes while the event loop awaits the model
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        # a segment's output that the next segment reads, not the run's: see shards.py
        self.scratch = False
        self.checked_input = False
        self.hold: _Hold | None = None  # keeps output tables for the next segment
        self.feed: _FitFeed | None = None  # hands output to the next segment's running fit
        self.fitted: _FitAhead | None = None  # this segment's fit, run alongside the last
        # shards written but not yet durable, by batch: (temporary name, name); a commit
        # fsyncs and renames those of the batches it records
        self.pending: dict[int, list[tuple[Path, Path]]] = {}
        self.write_options: dict[tuple[Path, pa.Schema], dict[str, Any]] = {}
        self.finished: list[tuple[FinishedBatch, list[tuple[Path, Path]]]] = []
        self.published: list[FinishedBatch] = []  # shards durable, batch not yet committed
        self.published_dirs: set[Path] = set()
        self.ready = threading.Event()  # a batch finished, or a worker stopped
        self.last_commit = time.monotonic()
        # worker threads share: the finished list, the folders to fsync, the write options
        # and progress (`lock`); the source's iterator (`read_lock`); the store (`commit_lock`)
        self.lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.commit_lock = threading.Lock()
        self.stop = threading.Event()  # a batch failed (or the run was interrupted)
        self.read_count = 0

    def run(self) -> int:
        """Run the segment's batches not yet committed; return its number of batches."""
        if self.concurrent:
            return run_coroutine(self._run_async())
        return self._run_threads()

    def _fit(self) -> None:
        seg = self.segment
        for j, stage in enumerate(seg.stages):
            if not stage.needs_fit:
                continue
            if j == 0 and self.fitted is not None:
                self.fitted.wait()  # fitted while the previous segment ran (raises its error)
                continue
            with _stage_context(self, seg.offset + j, stage):
                stage.fit(self._read_input)

    def _start(self) -> tuple[dict[int, BatchFingerprint], Iterator[pa.Table]]:
        """The committed batches' fingerprints and the stream of input batches."""
        seg = self.segment
        done = self.store.done_batches(self.run_id, seg.index)
        total = self.source.count_rows()
        self.progress.start_segment(
            [(seg.offset + j, s.name) for j, s in enumerate(seg.stages)], total
        )
        batches = read_batches(
            self.source, self.batch_size, unique_ids=seg.index == 0, checked=self.checked_input
        )
        return done, batches

    # CPU-only segments: worker threads ---------------------------------------------------

    def _run_threads(self) -> int:
        """Each worker takes the next batch from the source (in order, under `read_lock`)
        and carries it through every stage to its shard; a worker that finds the commit
        interval passed commits what has finished while the others go on. The stages and
        writes are pyarrow / polars calls that release the GIL, so batches overlap."""
        self._fit()
        done, batches = self._start()
        errors: list[BaseException] = []
        if self.in_flight > 1:  # decode the next batches while the workers compute
            batches = read_ahead(batches, self.in_flight)
        numbered = enumerate(batches)
        try:
            if self.in_flight == 1:
                self._work(numbered, done)
            else:
                threads = [
                    threading.Thread(
                        target=self._guarded_work,
                        args=(numbered, done, errors),
                        name=f"assay-seg{self.segment.index}-{k}",
                        daemon=True,
                    )
                    for k in range(self.in_flight)
                ]
                for thread in threads:
                    thread.start()
                try:
                    self._commit_while(threads)
                finally:  # a failed commit, or Ctrl-C: the workers stop at the next stage
                    self.stop.set()
                    for thread in threads:
                        thread.join()
                if errors:
                    raise errors[0]
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # stops the read-ahead thread
            try:
                self.commit()  # what finished is kept, even when another batch failed
            finally:
                self._drop_pending()
                self.progress.end_segment()
        return self.read_count

    def _commit_while(self, threads: list[threading.Thread]) -> None:
        """While the workers run, this thread publishes (fsyncs and renames) the shards of
        each batch as it finishes and commits once per `COMMIT_INTERVAL_S`, so a worker never
        waits on the disk or on DuckDB."""
        while True:
            self.ready.clear()  # before looking: a batch or an exit after this sets it again
            if not any(thread.is_alive() for thread in threads):
                return
            self.publish_finished()
            if time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
                self.commit()
            self.ready.wait(max(0.01, COMMIT_INTERVAL_S - (time.monotonic() - self.last_commit)))

    def _guarded_work(
        self,
        numbered: Iterator[tuple[int, pa.Table]],
        done: dict[int, BatchFingerprint],
        errors: list[BaseException],
    ) -> None:
        try:
            self._work(numbered, done)
        except _Abandoned:
            pass
        except BaseException as exc:  # handed to the calling thread, which raises it
            with self.lock:
                errors.append(exc)
            self.stop.set()
        finally:
            self.ready.set()  # the committing thread looks whether the workers are done

    def _work(
        self, numbered: Iterator[tuple[int, pa.Table]], done: dict[int, BatchFingerprint]
    ) -> None:
        while not self.stop.is_set():
            with self.read_lock:  # the source is read in order, one batch at a time
                if self.stop.is_set():
                    return
                item = next(numbered, None)
                if item is None:
                    return
                b, table = item
                self.read_count = b + 1
            if b in done:
                check_unchanged(b, table, done[b])
                if self.feed is not None:
                    self.feed.on_disk(b)
                with self.lock:
                    self.progress.skip(table.num_rows)
                continue
            self._finish(self._process(b, table), commit=self.in_flight == 1)

    def _process(self, b: int, table: pa.Table) -> FinishedBatch:
        """One batch through every stage of the segment, in this thread, to its shard."""
        seg = self.segment
        counts: list[StageCount] = []
        rejects: list[pa.Table] = []
        lineage: list[pa.Table] = []
        rows_at_start = table.num_rows
        batch_fingerprint = fingerprint(table)
        self._clear_stale_rejects(b)
        for j, stage in enumerate(seg.stages):
            if self.stop.is_set():  # another batch failed: leave this one to the resume
                raise _Abandoned
            index = seg.offset + j
            started = time.perf_counter()
            rows_in = table.num_rows
            n_rejected = 0
            if rows_in:
                stage.check_columns(table)
                with _stage_context(self, index, stage):
                    result = _call(stage, b, stage.process, table)
                table, rejected = self._accept(stage, index, b, table, result, lineage)
                if rejected is not None:
                    n_rejected = rejected.num_rows
                    rejects.append(self._write_rejects(index, stage, b, rejected))
            counts.append(
                StageCount(
                    index, rows_in, table.num_rows, n_rejected, time.perf_counter() - started
                )
            )
            with self.lock:
                self.progress.advance(index, rows_at_start, rows_in, table.num_rows, n_rejected)
        return self._output(b, batch_fingerprint, table, counts, rejects, lineage)

    # LLM segments: an event loop, CPU work in a pool -------------------------------------

    async def _run_async(self) -> int:
        self.pool = concurrent.futures.ThreadPoolExecutor(
            self.in_flight, thread_name_prefix=f"assay-seg{self.segment.index}"
        )
        try:
            return await self._run_batches()
        finally:
            self.pool.shutdown(wait=True)
            self.pool = None
            self._drop_pending()  # of batches cancelled by another's failure

    async def _run_batches(self) -> int:
        import asyncio

        self._fit()
        done, batches = self._start()
        pending: set[asyncio.Task[None]] = set()
        n_batches = 0
        try:
            for b, table in enumerate(batches):
                n_batches = b + 1
                if b in done:
                    check_unchanged(b, table, done[b])
                    if self.feed is not None:
                        self.feed.on_disk(b)
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

    async def _batch(self, b: int, table: pa.Table) -> None:
        seg = self.segment
        counts: list[StageCount] = []
        rejects: list[pa.Table] = []
        lineage: list[pa.Table] = []
        rows_at_start = table.num_rows
        batch_fingerprint = fingerprint(table)
        self._clear_stale_rejects(b)
        for j, stage in enumerate(seg.stages):
            index = seg.offset + j
            started = time.perf_counter()
            rows_in = table.num_rows
            n_rejected = 0
            if rows_in:
                stage.check_columns(table)
                with _stage_context(self, index, stage):
                    result = await self._call(stage, table, b)
                table, rejected = self._accept(stage, index, b, table, result, lineage)
                if rejected is not None:
                    n_rejected = rejected.num_rows
                    rejects.append(
                        await self._off_loop(self._write_rejects, index, stage, b, rejected)
                    )
            counts.append(
                StageCount(
                    index, rows_in, table.num_rows, n_rejected, time.perf_counter() - started
                )
            )
            self.progress.advance(index, rows_at_start, rows_in, table.num_rows, n_rejected)
        finished = await self._off_loop(
            self._output, b, batch_fingerprint, table, counts, rejects, lineage
        )
        # the commit stays on the loop's thread: the LLM cache writes to the same DuckDB
        # connection from there (the shards were published in the pool already)
        self._finish(finished, commit=True)

    async def _call(self, stage: Stage, table: pa.Table, b: int) -> pa.Table | Outcome:
        if stage.is_async:
            try:
                return await stage.aprocess(table)  # type: ignore[attr-defined]
            except AssayError:
                raise
            except Exception as exc:
                raise _stage_error(stage, b, exc) from exc
        return await self._off_loop(_call, stage, b, stage.process, table)

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        """Call `fn` in a worker thread (the stage context travels with the call)."""
        import asyncio

        assert self.pool is not None
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(ctx.run, fn, *args))

    # both ---------------------------------------------------------------------------------

    def _clear_stale_rejects(self, b: int) -> None:
        # a failed earlier attempt at this batch may have left reject shards: they must not
        # outlive it (this attempt writes its own, under the same names)
        pattern = f"*/seg{self.segment.index}-{b:06d}.parquet"
        for stale in (self.run_dir / "rejects").glob(pattern):
            stale.unlink()
        for stale in (self.run_dir / "rejects").glob(pattern + ".tmp"):
            stale.unlink()

    def _accept(
        self,
        stage: Stage,
        index: int,
        b: int,
        table: pa.Table,
        result: object,
        lineage: list[pa.Table],
    ) -> tuple[pa.Table, pa.Table | None]:
        """Check a stage's result; return the kept rows and the rejected ones (or None)."""
        kept, rejected, created = check_result(stage, table, result, b)
        if created is not None:
            stage_col = repeat(index, created.num_rows, pa.int32())
            lineage.append(created.append_column("stage_index", stage_col))
        return kept, rejected if rejected is not None and rejected.num_rows else None

    def _output(
        self,
        b: int,
        batch_fingerprint: BatchFingerprint,
        table: pa.Table,
        counts: list[StageCount],
        rejects: list[pa.Table],
        lineage: list[pa.Table],
    ) -> FinishedBatch:
        """Write the batch's output shard; return the batch, ready to commit."""
        name = f"part-{b:06d}.parquet"
        self._write_shard(b, table, self.out_dir / name, self.scratch)
        held = self.hold is not None and self.hold.add(name, table)
        if self.feed is not None:
            if held:
                self.feed.put(b, table)
            elif self.concurrent:  # published already
                self.feed.on_disk(b)
        return FinishedBatch(
            self.segment.index,
            b,
            batch_fingerprint,
            table.num_rows,
            counts,
            rejects=pa.concat_tables(rejects) if rejects else None,
            lineage=pa.concat_tables(lineage) if lineage else None,
        )

    def _finish(self, finished: FinishedBatch, commit: bool) -> None:
        """Queue a finished batch (and its pending shards) for publishing and the next
        commit; with `commit`, this thread commits if the interval has passed."""
        with self.lock:
            self.finished.append((finished, self.pending.pop(finished.batch, [])))
        self.ready.set()
        if commit and time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self.commit()

    def publish_finished(self) -> None:
        """fsync and rename the shards of the finished batches (not yet committed)."""
        with self.commit_lock:
            self._publish()

    def _publish(self) -> None:
        with self.lock:
            taken, self.finished = self.finished, []
        for batch, files in taken:
            for tmp, path in files:
                if tmp != path:  # not published yet
                    publish(tmp, path)
                self.published_dirs.add(path.parent)
            self.published.append(batch)
            if self.feed is not None:
                self.feed.on_disk(batch.batch)  # unless it was handed over in memory

    def commit(self) -> None:
        """Commit the finished batches not yet recorded.

        Their shards, written under temporary names, are fsynced and renamed (unless
        `publish_finished` did that already), then their folders fsynced, then the batches
        recorded in the store: a batch the store calls done survives a power loss with its
        shards.
        """
        with self.commit_lock:
            self._publish()
            if not self.published:
                self.last_commit = time.monotonic()  # nothing to commit: a new interval
                return
            batches, self.published = self.published, []
            folders, self.published_dirs = self.published_dirs, set()
            for folder in sorted(folders):
                fsync_dir(folder)
            self.store.commit_batches(self.run_id, batches)
            self.last_commit = time.monotonic()

    def _drop_pending(self) -> None:
        """Remove the temporary shards of batches that did not finish (a failure, Ctrl-C)."""
        with self.lock:
            pending, self.pending = self.pending, {}
        for files in pending.values():
            for tmp, path in files:
                if tmp != path:
                    tmp.unlink(missing_ok=True)

    def _read_input(self) -> Iterator[pa.Table]:
        """A fresh pass over the segment's input (what a fit stage reads), decoded a batch
        ahead in another thread while the fit works on the current one."""
        return read_ahead(read_batches(self.source, self.batch_size, checked=self.checked_input))

    def _write_shard(self, b: int, table: pa.Table, path: Path, scratch: bool = False) -> None:
        """Write batch `b`'s shard under its temporary name; its commit publishes it."""
        # the write options are judged on a folder's first shard of each schema
        key = (path.parent, table.schema)
        with self.lock:
            options = self.write_options.get(key)
        if options is None:
            options = write_options(table, scratch)
            with self.lock:
                options = self.write_options.setdefault(key, options)
        tmp = write_pending(table, path, options)
        if self.concurrent:  # an LLM segment commits on its event loop: publish here
            publish(tmp, path)
            tmp = path
        with self.lock:
            self.pending.setdefault(b, []).append((tmp, path))

    def _write_rejects(self, index: int, stage: Stage, b: int, rejected: pa.Table) -> pa.Table:
        """Keep the removed rows as Parquet; return (row_id, stage_index, stage, reason)."""
        path = (
            self.run_dir
            / "rejects"
            / f"{index:02d}-{stage.name}"
            / f"seg{self.segment.index}-{b:06d}.parquet"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_shard(b, rejected, path)
        n = rejected.num_rows
        return pa.table(
            {
                "row_id": rejected[ID],
                "stage_index": repeat(index, n, pa.int32()),
                "stage": repeat(stage.name, n),
                "reason": rejected["_reason"],
            }
        )


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer (an
    exception it raises is raised here). Closing this generator, or dropping it, stops the
    thread after the item it is making."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(max(1, depth))
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="assay-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            more, item = slots.get()
            if more:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        thread.join()


class _Abandoned(Exception):
    """A batch left unfinished because another one failed (the resume redoes it)."""


def _call(stage: Stage, b: int, fn: Any, table: pa.Table) -> pa.Table | Outcome:
    """`fn(table)`, a failure named after the stage and batch."""
    try:
        return fn(table)
    except AssayError:
        raise
    except Exception as exc:
        raise _stage_error(stage, b, exc) from exc


def _stage_error(stage: Stage, b: int, exc: Exception) -> StageError:
    return StageError(stage.name, f"failed on batch {b}: {type(exc).__name__}: {exc}")


async def _reap(pending: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """Wait for at least one batch; raise the first failure (after retrieving them all)."""
    import asyncio

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
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="assay-run") as pool:
        return pool.submit(asyncio.run, coro).result()
