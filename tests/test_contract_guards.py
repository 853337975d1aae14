"""The executor refuses results and resumes that would lose or duplicate rows silently."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from engine_stages import (
    Duplicates,
    FailOn,
    HalfChildren,
    OwnParent,
    RejectOddUntilFixed,
    Upper,
)

from assay.curate.errors import AssayError, SourceError, StageError
from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore

ROWS = [{"text": f"row {i}", "n": i} for i in range(20)]


def _failed_run(workspace: Path, tmp_path: Path, source, executor=None) -> tuple[Pipeline, str]:
    pipeline = Pipeline([Upper(), FailOn(bad_id="13", fixed=str(tmp_path / "fixed"))], batch_size=4)
    with pytest.raises(StageError, match="boom"):
        pipeline.run(source, workspace=workspace, executor=executor, progress="quiet")
    with RunStore(workspace) as store:
        return pipeline, store.runs()[0]["run_id"]


def test_a_stage_that_duplicates_a_row_is_refused(workspace: Path) -> None:
    with pytest.raises(StageError, match=r"row id '3'.*never be dropped silently"):
        # one batch at a time: the first batch's error is the one raised
        Pipeline([Duplicates()]).run(
            ROWS, workspace=workspace, progress="quiet", executor=LocalExecutor(4, cpu_workers=1)
        )


def test_a_creating_stage_that_drops_parents_is_refused(workspace: Path) -> None:
    with pytest.raises(StageError, match=r"HalfChildren.*row id '2'.*neither the parent"):
        Pipeline([HalfChildren()]).run(
            ROWS, workspace=workspace, progress="quiet", executor=LocalExecutor(4, cpu_workers=1)
        )


def test_a_created_row_that_is_its_own_parent_is_refused(workspace: Path) -> None:
    with pytest.raises(StageError, match="an id of its own"):
        Pipeline([OwnParent()]).run(ROWS, workspace=workspace, progress="quiet")


def test_ids_repeated_across_batches_are_refused(workspace: Path) -> None:
    rows = [{"id": f"r{i % 5}" if i == 7 else f"r{i}", "text": "x"} for i in range(10)]
    with pytest.raises(SourceError, match="'r2' appears more than once"):
        Pipeline([Upper()], batch_size=4).run(rows, workspace=workspace, progress="quiet")


def test_resume_with_another_batch_size_is_refused(workspace: Path, tmp_path: Path) -> None:
    pipeline, run_id = _failed_run(workspace, tmp_path, ROWS, LocalExecutor(batch_size=4))
    (tmp_path / "fixed").touch()
    with pytest.raises(AssayError, match="batch_size differ"):
        pipeline.run(
            ROWS,
            workspace=workspace,
            resume=run_id,
            executor=LocalExecutor(batch_size=5),
            progress="quiet",
        )
    result = pipeline.run(
        ROWS,
        workspace=workspace,
        resume=run_id,
        executor=LocalExecutor(batch_size=4),
        progress="quiet",
    )
    assert result.to_arrow()["n"].to_pylist() == list(range(20))


def test_resume_over_a_changed_source_is_refused(workspace: Path, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pipeline, run_id = _failed_run(workspace, tmp_path, path)
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[2:]))  # two rows gone
    (tmp_path / "fixed").touch()
    with pytest.raises(AssayError, match="the source changed since the run started"):
        pipeline.run(path, workspace=workspace, resume=run_id, progress="quiet")
    with pytest.raises(AssayError, match="source differ"):
        pipeline.run(ROWS[:8], workspace=workspace, resume=run_id, progress="quiet")


def test_rejects_of_a_failed_attempt_do_not_outlive_it(workspace: Path, tmp_path: Path):
    fixed = str(tmp_path / "fixed")
    pipeline = Pipeline(
        [RejectOddUntilFixed(fixed=fixed), FailOn(bad_id="0", fixed=fixed)], batch_size=5
    )
    # first attempt at batch 0: the odd rows are rejected, then the next stage fails (one
    # worker: no other batch finishes, and commits its rejects, before the failure)
    with pytest.raises(StageError, match="boom"):
        pipeline.run(
            ROWS, workspace=workspace, progress="quiet", executor=LocalExecutor(5, cpu_workers=1)
        )
    (run_dir,) = (workspace / "runs").iterdir()
    # the failed batch's shards were never made durable: nothing of them is left
    assert not list(run_dir.glob("rejects/*/seg0-000000.parquet*"))
    # as a crash between a commit's renames and its DuckDB transaction would leave one
    stale = run_dir / "rejects" / "00-RejectOddUntilFixed" / "seg0-000000.parquet"
    stale.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ["1"], "_reason": ["odd, not yet fixed"]}), stale)
    Path(fixed).touch()
    # the redo rejects nothing: no shard of the failed attempt may remain
    result = pipeline.run(ROWS, workspace=workspace, resume=run_dir.name, progress="quiet")
    assert result.rejects().num_rows == 0
    assert result.to_arrow()["n"].to_pylist() == list(range(20))
