"""CPU-only segments: worker threads, each carrying a batch through every stage.

The stages and writes are pyarrow / polars calls that release the GIL, so batches overlap;
a stage's `process` must not mutate state shared between batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from assay.curate.executors.segment_run import COMMIT_INTERVAL_S, SegmentRun
from assay.curate.executors.stage_calls import Abandoned, call_stage
from assay.curate.executors.threads import read_ahead
from assay.curate.store import BatchFingerprint, FinishedBatch


class CpuSegmentRun(SegmentRun):
    """Runs a CPU-only segment on `in_flight` worker threads (1: in the calling thread)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_lock = threading.Lock()  # the source's iterator, read by every worker
        self.stop = threading.Event()  # a batch failed (or the run was interrupted)
        self.read_count = 0

    def run(self) -> int:
        """Each worker takes the next batch from the source (in order, under `read_lock`)
        and carries it through every stage to its shard; a worker that finds the commit
        interval passed commits what has finished while the others go on."""
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
        except Abandoned:
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
                self._skip(b, table, done)
                continue
            self._finish(self._process(b, table), commit=self.in_flight == 1)

    def _process(self, b: int, table: pa.Table) -> FinishedBatch:
        """One batch through every stage of the segment, in this thread, to its shard."""
        seg = self.segment
        record = self._begin(b, table)
        for j, stage in enumerate(seg.stages):
            if self.stop.is_set():  # another batch failed: leave this one to the resume
                raise Abandoned
            index = seg.offset + j
            started = time.perf_counter()
            rows_in = table.num_rows
            n_rejected = 0
            if rows_in:
                stage.check_columns(table)
                with self.stage_context(index, stage):
                    result = call_stage(stage, b, stage.process, table)
                table, rejected = self._accept(record, stage, index, table, result)
                if rejected is not None:
                    n_rejected = rejected.num_rows
                    record.rejects.append(self._write_rejects(index, stage, b, rejected))
            self._stage_done(record, index, rows_in, table.num_rows, n_rejected, started)
        return self._output(record, table)
