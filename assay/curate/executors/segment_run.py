"""A segment's run: what CPU-only and LLM segments share.

Each finished batch is committed: its output written as a Parquet shard (temporary name,
then an atomic rename; a segment's output that only the next segment reads is written
uncompressed, see `shards.py`), then its counts, rejects and lineage recorded in the run
store in one transaction, shared by the batches that finish within `COMMIT_INTERVAL_S`.
`cpu_segment.py` and `llm_segment.py` decide which threads carry batches through the stages.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from assay.curate.arrays import repeat
from assay.curate.context import StageContext, current_stage
from assay.curate.executors.checks import check_result, check_unchanged, fingerprint
from assay.curate.executors.shards import fsync_dir, publish, write_options, write_pending
from assay.curate.executors.threads import read_ahead
from assay.curate.progress import Progress
from assay.curate.sources import Source, read_batches
from assay.curate.stage import ID, Stage
from assay.curate.store import BatchFingerprint, FinishedBatch, RunStore, StageCount

if TYPE_CHECKING:
    from assay.curate.executors.fit_ahead import FitAhead, FitFeed
    from assay.curate.executors.held import Hold
    from assay.curate.executors.segments import Segment

# Batches finishing within this interval share one DuckDB transaction (a commit costs an
# fsync and ~10 ms of CPU here); a crash loses at most this much finished work (its shards
# are on disk, but uncommitted), which a resume redoes.
COMMIT_INTERVAL_S = 1.0


@dataclass
class BatchRecord:
    """What a batch leaves besides its rows, stage by stage: counts, rejects and lineage."""

    b: int
    rows_at_start: int
    fingerprint: BatchFingerprint
    counts: list[StageCount] = field(default_factory=list)
    rejects: list[pa.Table] = field(default_factory=list)
    lineage: list[pa.Table] = field(default_factory=list)


class SegmentRun(ABC):
    """Runs one segment's batches not yet committed (`run`, in a subclass) and commits them.

    `in_flight` is how many batches are carried through the stages at once.
    """

    # an LLM segment commits on its event loop, so its shards are published as they are
    # written; a CPU segment's committing thread publishes them
    publishes_on_write: ClassVar[bool] = False

    def __init__(
        self,
        segment: Segment,
        source: Source,
        store: RunStore,
        run_id: str,
        run_dir: Path,
        out_dir: Path,
        progress: Progress,
        no_cache: bool,
        batch_size: int,
        in_flight: int,
    ) -> None:
        self.segment = segment
        self.source = source
        self.store = store
        self.run_id = run_id
        self.run_dir = run_dir
        self.out_dir = out_dir
        self.progress = progress
        self.no_cache = no_cache
        self.batch_size = batch_size
        self.in_flight = in_flight
        # a segment's output that the next segment reads, not the run's: see shards.py
        self.scratch = False
        self.checked_input = False
        self.hold: Hold | None = None  # keeps output tables for the next segment
        self.feed: FitFeed | None = None  # hands output to the next segment's running fit
        self.fitted: FitAhead | None = None  # this segment's fit, run alongside the last
        # shards written but not yet durable, by batch: (temporary name, name); a commit
        # fsyncs and renames those of the batches it records
        self.pending: dict[int, list[tuple[Path, Path]]] = {}
        self.write_options: dict[tuple[Path, pa.Schema], dict[str, Any]] = {}
        self.finished: list[tuple[FinishedBatch, list[tuple[Path, Path]]]] = []
        self.published: list[FinishedBatch] = []  # shards durable, batch not yet committed
        self.published_dirs: set[Path] = set()
        self.ready = threading.Event()  # a batch finished, or a worker stopped
        self.last_commit = time.monotonic()
        # threads share: the finished list, the folders to fsync, the write options and
        # progress (`lock`); the store (`commit_lock`)
        self.lock = threading.Lock()
        self.commit_lock = threading.Lock()

    @abstractmethod
    def run(self) -> int:
        """Run the segment's batches not yet committed; return its number of batches."""

    def _fit(self) -> None:
        seg = self.segment
        for j, stage in enumerate(seg.stages):
            if not stage.needs_fit:
                continue
            if j == 0 and self.fitted is not None:
                self.fitted.wait()  # fitted while the previous segment ran (raises its error)
                continue
            with self.stage_context(seg.offset + j, stage):
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

    def stage_context(self, index: int, stage: Stage) -> _StageScope:
        """Makes stage `index` the current stage for the calls made within it."""
        return _StageScope(StageContext(self.run_id, index, stage.name, self.store, self.no_cache))

    # one batch ------------------------------------------------------------------------------

    def _skip(self, b: int, table: pa.Table, done: dict[int, BatchFingerprint]) -> None:
        """Batch `b` was committed by an earlier run: check its input is the same, skip it."""
        check_unchanged(b, table, done[b])
        if self.feed is not None:
            self.feed.on_disk(b)
        with self.lock:
            self.progress.skip(table.num_rows)

    def _begin(self, b: int, table: pa.Table) -> BatchRecord:
        """Start batch `b`'s record (before any stage runs on it)."""
        record = BatchRecord(b, table.num_rows, fingerprint(table))
        self._clear_stale_rejects(b)
        return record

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
        record: BatchRecord,
        stage: Stage,
        index: int,
        table: pa.Table,
        result: object,
    ) -> tuple[pa.Table, pa.Table | None]:
        """Check a stage's result; return the kept rows and the rejected ones (or None)."""
        kept, rejected, created = check_result(stage, table, result, record.b)
        if created is not None:
            stage_col = repeat(index, created.num_rows, pa.int32())
            record.lineage.append(created.append_column("stage_index", stage_col))
        return kept, rejected if rejected is not None and rejected.num_rows else None

    def _stage_done(
        self,
        record: BatchRecord,
        index: int,
        rows_in: int,
        rows_out: int,
        n_rejected: int,
        started: float,
    ) -> None:
        """Count stage `index`'s work on the batch (`started`: its `perf_counter` start)."""
        record.counts.append(
            StageCount(index, rows_in, rows_out, n_rejected, time.perf_counter() - started)
        )
        with self.lock:
            self.progress.advance(index, record.rows_at_start, rows_in, rows_out, n_rejected)

    def _output(self, record: BatchRecord, table: pa.Table) -> FinishedBatch:
        """Write the batch's output shard; return the batch, ready to commit."""
        b = record.b
        name = f"part-{b:06d}.parquet"
        self._write_shard(b, table, self.out_dir / name, self.scratch)
        held = self.hold is not None and self.hold.add(name, table)
        if self.feed is not None:
            if held:
                self.feed.put(b, table)
            elif self.publishes_on_write:  # published already
                self.feed.on_disk(b)
        return FinishedBatch(
            self.segment.index,
            b,
            record.fingerprint,
            table.num_rows,
            record.counts,
            rejects=pa.concat_tables(record.rejects) if record.rejects else None,
            lineage=pa.concat_tables(record.lineage) if record.lineage else None,
        )

    def _finish(self, finished: FinishedBatch, commit: bool) -> None:
        """Queue a finished batch (and its pending shards) for publishing and the next
        commit; with `commit`, this thread commits if the interval has passed."""
        with self.lock:
            self.finished.append((finished, self.pending.pop(finished.batch, [])))
        self.ready.set()
        if commit and time.monotonic() - self.last_commit >= COMMIT_INTERVAL_S:
            self.commit()

    # shards and commits ---------------------------------------------------------------------

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
        if self.publishes_on_write:
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


class _StageScope:
    """Sets `current_stage` for the calls made within it."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> None:
        self.token = current_stage.set(self.ctx)

    def __exit__(self, *exc: object) -> None:
        current_stage.reset(self.token)
