"""Fitting a segment's first stage while the previous segment still makes its input.

The previous segment hands each finished batch to a `FitFeed` (the table itself when it is
held in memory, else a note that its shard is on disk); a `FitAhead` runs the stage's fit in
a thread of its own, its first pass reading the feed in batch order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from assay.curate.context import StageContext, current_stage
from assay.curate.executors.stage_calls import Abandoned
from assay.curate.sources import Source, parquet_batches, read_batches
from assay.curate.stage import Stage


class FitFeed:
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
                    raise Abandoned
                b = self.next
                table = self.ready.pop(b)
                self.next += 1
            if table is not None:
                yield table
            else:
                yield from parquet_batches(self.out_dir / f"part-{b:06d}.parquet")


class _FeedSource(Source):
    def __init__(self, feed: FitFeed) -> None:
        self.feed = feed

    def record_batches(self) -> Iterator[pa.RecordBatch | pa.Table]:
        return self.feed.tables()


class FitAhead:
    """The fit of a segment's first stage, run in a thread of its own while the previous
    segment makes its input: its first pass reads the batches as they are finished; a
    second pass, if it makes one, waits for the whole input."""

    def __init__(
        self,
        stage: Stage,
        feed: FitFeed,
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
