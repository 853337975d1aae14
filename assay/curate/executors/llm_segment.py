"""LLM segments: batches awaiting the model on an event loop, CPU work in a thread pool.

Up to `in_flight` batches wait on the model at once; their CPU stages and shard writes run
in a pool of as many threads, and commits stay on the loop's thread, whose request cache
writes to the same DuckDB connection. asyncio is imported only here, when a segment awaits
an LLM (it costs ~30 ms).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import time
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from assay.curate.errors import AssayError
from assay.curate.executors.segment_run import SegmentRun
from assay.curate.executors.stage_calls import call_stage, stage_error
from assay.curate.executors.threads import run_coroutine
from assay.curate.stage import Outcome, Stage

if TYPE_CHECKING:
    import asyncio


class LlmSegmentRun(SegmentRun):
    """Runs a segment with an async (LLM) stage on an event loop."""

    publishes_on_write: ClassVar[bool] = True
    # one worker thread per batch in flight runs the CPU stages and shard writes while the
    # event loop awaits the model
    pool: concurrent.futures.ThreadPoolExecutor | None = None

    def run(self) -> int:
        return run_coroutine(self._run_async())

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
                    self._skip(b, table, done)
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
        record = self._begin(b, table)
        for j, stage in enumerate(seg.stages):
            index = seg.offset + j
            started = time.perf_counter()
            rows_in = table.num_rows
            n_rejected = 0
            if rows_in:
                stage.check_columns(table)
                with self.stage_context(index, stage):
                    result = await self._call(stage, table, b)
                table, rejected = self._accept(record, stage, index, table, result)
                if rejected is not None:
                    n_rejected = rejected.num_rows
                    record.rejects.append(
                        await self._off_loop(self._write_rejects, index, stage, b, rejected)
                    )
            self._stage_done(record, index, rows_in, table.num_rows, n_rejected, started)
        finished = await self._off_loop(self._output, record, table)
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
                raise stage_error(stage, b, exc) from exc
        return await self._off_loop(call_stage, stage, b, stage.process, table)

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        """Call `fn` in a worker thread (the stage context travels with the call)."""
        import asyncio

        assert self.pool is not None
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(ctx.run, fn, *args))


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
