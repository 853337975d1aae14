"""A fit stage that allows it (`fit_overlaps`) is fitted while the previous segment still
makes its input: same result as fitting afterwards, its errors and the previous segment's
raised as before, and a resume over a half-done segment feeds it the committed batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pytest
from engine_stages import FailOn, SlowLog, Upper

from assay.curate.errors import StageError
from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.stage import BatchReader, Stage
from assay.curate.store import RunStore
from assay.operators.dedupe.exact import ExactDedupe

N = 400
ROWS = [{"text": f"text {i % 150}", "n": i} for i in range(N)]


class CountingFit(Stage):
    """Records, per pass, the ids its fit reads and when its first batch came; keeps all rows."""

    needs_fit: ClassVar[bool] = True
    fit_overlaps: ClassVar[bool] = True
    passes: ClassVar[int] = 1
    seen: ClassVar[list[list[str]]] = []
    first_batch_at: ClassVar[list[float]] = []
    fail: ClassVar[bool] = False

    def fit(self, read_input: BatchReader) -> None:
        type(self).seen = []
        type(self).first_batch_at = []
        for _ in range(self.passes):
            ids: list[str] = []
            for batch in read_input():
                if not ids:
                    type(self).first_batch_at.append(time.monotonic())
                ids.extend(batch["id"].to_pylist())
            type(self).seen.append(ids)
        if self.fail:
            raise ValueError("fit broke")

    def process(self, table: pa.Table) -> pa.Table:
        return table


class StampLast(SlowLog):
    """SlowLog that also records when each batch finished."""

    finished_at: ClassVar[list[float]] = []

    def map(self, table: pa.Table) -> pa.Table:
        out = super().map(table)
        type(self).finished_at.append(time.monotonic())
        return out


def _run(workspace: Path, stages: list[Stage], **executor) -> object:
    options = {"cpu_workers": 2, **executor}
    return Pipeline(stages, batch_size=20).run(
        ROWS, workspace=workspace, progress="quiet", executor=LocalExecutor(20, **options)
    )


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CountingFit.passes, CountingFit.fail = 1, False
    StampLast.finished_at = []
    yield


def test_the_fit_reads_batches_while_the_previous_segment_runs(
    workspace: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    _run(workspace, [StampLast(log=str(log), seconds=0.02), CountingFit()])
    # every row once, in source order, and the first batch long before the segment's end
    assert CountingFit.seen == [[str(i) for i in range(N)]]
    assert CountingFit.first_batch_at[0] < max(StampLast.finished_at) - 0.05


def test_without_overlap_the_fit_waits_for_the_whole_input(workspace: Path, tmp_path: Path):
    log = tmp_path / "log"
    _run(workspace, [StampLast(log=str(log), seconds=0.02), CountingFit()], overlap_fits=False)
    assert CountingFit.seen == [[str(i) for i in range(N)]]
    assert CountingFit.first_batch_at[0] > max(StampLast.finished_at)


def test_a_second_pass_reads_the_whole_input_again(workspace: Path, tmp_path: Path) -> None:
    CountingFit.passes = 2
    _run(workspace, [Upper(), CountingFit()], hold_bytes=0)
    assert CountingFit.seen == [[str(i) for i in range(N)]] * 2


@pytest.mark.parametrize("hold_bytes", [0, 1 << 30])
def test_dedupe_fitted_ahead_gives_the_same_rows_and_rejects(
    tmp_path: Path, hold_bytes: int
) -> None:
    stages = [Upper(), ExactDedupe(columns=["upper"])]
    ahead = _run(tmp_path / "a", stages, hold_bytes=hold_bytes)
    after = _run(tmp_path / "b", stages, hold_bytes=hold_bytes, overlap_fits=False)
    assert ahead.to_arrow().equals(after.to_arrow())
    assert ahead.rejects().sort_by("id").equals(after.rejects().sort_by("id"))
    assert ahead.to_arrow().num_rows == 150


def test_a_failing_fit_is_raised_after_the_previous_segment_is_committed(
    workspace: Path,
) -> None:
    CountingFit.fail = True
    with pytest.raises(ValueError, match="fit broke"):
        _run(workspace, [Upper(), CountingFit()])
    with RunStore(workspace) as store:
        (run,) = store.runs()
        assert store.segment_complete(run["run_id"], 0)  # its work is kept
    CountingFit.fail = False
    result = Pipeline([Upper(), CountingFit()], batch_size=20).run(
        ROWS, workspace=workspace, resume=run["run_id"], progress="quiet"
    )
    assert result.to_arrow()["n"].to_pylist() == list(range(N))


def test_a_failing_segment_stops_the_fit_running_beside_it(workspace: Path, tmp_path: Path) -> None:
    threads = threading.active_count()
    stages = [Upper(), FailOn(bad_id="250"), CountingFit()]
    with pytest.raises(StageError, match="boom"):
        _run(workspace, stages)
    assert threading.active_count() == threads  # no fit (or worker) thread left behind


def test_resume_feeds_the_fit_the_committed_batches_then_the_new_ones(
    workspace: Path, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"
    stages = [Upper(), FailOn(bad_id="250", fixed=str(fixed)), CountingFit()]
    sequential = {"cpu_workers": 1}  # the batches before the failing one are committed
    with pytest.raises(StageError, match="boom"):
        _run(workspace, stages, **sequential)
    with RunStore(workspace) as store:
        (run,) = store.runs()
        assert len(store.done_batches(run["run_id"], 0)) == 12  # batches 0-11 of 20
    fixed.touch()
    result = Pipeline(stages, batch_size=20).run(
        ROWS,
        workspace=workspace,
        resume=run["run_id"],
        progress="quiet",
        executor=LocalExecutor(20, cpu_workers=2),
    )
    assert CountingFit.seen == [[str(i) for i in range(N)]]
    assert result.to_arrow()["n"].to_pylist() == list(range(N))
