"""The executor keeps the table contract: rows are kept or rejected with a reason, ids survive,
output keeps source order, broken stages are named, and completed batches survive failures."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from engine_stages import (
    DropsSilently,
    EvenOnly,
    FailOn,
    InterruptOn,
    InventsRows,
    RejectAll,
    ReturnsList,
    SlowLog,
    Split,
    Upper,
)

from assay.curate.errors import AssayError, MissingColumnError, StageError
from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.operators.text import MinLength

ROWS = [{"text": f"row {i}", "n": i} for i in range(25)]


def test_filter_rejects_keep_rows_reasons_and_counts(workspace: Path) -> None:
    result = Pipeline([Upper(), EvenOnly()], batch_size=4).run(
        ROWS, workspace=workspace, progress="quiet"
    )
    out = result.to_arrow()
    assert out["n"].to_pylist() == list(range(0, 25, 2))  # source order across batches
    assert out["upper"].to_pylist()[:2] == ["ROW 0", "ROW 2"]
    assert out["id"].to_pylist() == [str(i) for i in range(0, 25, 2)]
    rejects = result.rejects()
    assert sorted(rejects["n"].to_pylist()) == list(range(1, 25, 2))
    assert set(rejects["_reason"].to_pylist()) == {"odd number"}
    funnel = {row["name"]: row for row in result.funnel()}
    assert funnel["Upper"]["rows_in"] == 25 and funnel["Upper"]["rows_out"] == 25
    assert funnel["EvenOnly"]["rows_out"] == 13
    assert funnel["EvenOnly"]["rows_rejected"] == 12
    with RunStore(workspace) as store:
        n = store.con.execute("select count(*) from rejects where reason = 'odd number'")
        assert n.fetchone()[0] == 12


def test_output_is_parquet_shards_readable_by_every_exporter(workspace: Path, tmp_path: Path):
    result = Pipeline([EvenOnly()], batch_size=10).run(ROWS, workspace=workspace, progress="quiet")
    shards = sorted(result.output_dir.glob("part-*.parquet"))
    assert len(shards) == 3
    assert sum(pq.read_metadata(s).num_rows for s in shards) == 13
    assert result.to_polars()["n"].to_list() == list(range(0, 25, 2))
    assert result.to_hf()["n"] == list(range(0, 25, 2))
    path = result.to_jsonl(tmp_path / "out.jsonl")
    assert len(path.read_text().splitlines()) == 13


def test_lineage_traces_created_rows_to_their_source_row(workspace: Path) -> None:
    result = Pipeline([Split(), Split()], batch_size=10).run(
        ROWS[:3], workspace=workspace, progress="quiet"
    )
    out = result.to_arrow()
    assert out.num_rows == 12
    assert "0/1/0" in out["id"].to_pylist()
    with RunStore(workspace) as store:
        assert store.source_of(result.run_id, "2/0/1") == "2"
        assert store.source_of(result.run_id, "1/1") == "1"


def test_a_stage_that_rejects_everything_leaves_later_stages_idle(workspace: Path) -> None:
    result = Pipeline([RejectAll(), Upper()], batch_size=10).run(
        ROWS, workspace=workspace, progress="quiet"
    )
    assert result.to_arrow().num_rows == 0
    funnel = result.funnel()
    assert funnel[0]["rows_rejected"] == 25 and funnel[1]["rows_in"] == 0


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (DropsSilently(), "never be dropped silently"),
        (ReturnsList(), "returned a list"),
        (InventsRows(), "id is not in its input"),
        (Split(), None),
    ],
)
def test_broken_stages_are_named(workspace: Path, stage, message) -> None:
    if message is None:  # a well-behaved creating stage passes: the control case
        out = Pipeline([stage]).run(ROWS, workspace=workspace, progress="quiet").to_arrow()
        assert out.num_rows == 2 * len(ROWS)
        return
    with pytest.raises(StageError, match=message) as info:
        Pipeline([stage], batch_size=10).run(ROWS, workspace=workspace, progress="quiet")
    assert type(stage).__name__ in str(info.value)


def test_missing_column_names_stage_and_column(workspace: Path) -> None:
    with pytest.raises(MissingColumnError, match=r"stage 'MinLength', column 'body'"):
        Pipeline([MinLength(column="body")]).run(ROWS, workspace=workspace, progress="quiet")


def test_a_failure_keeps_completed_batches_and_resume_finishes(workspace, tmp_path) -> None:
    log = tmp_path / "log"
    fixed = tmp_path / "fixed"
    pipeline = Pipeline(
        [SlowLog(log=str(log), seconds=0), FailOn(bad_id="13", fixed=str(fixed))], batch_size=5
    )
    # one batch at a time, so the batches after the failing one have not started
    sequential = LocalExecutor(batch_size=5, cpu_workers=1)
    with pytest.raises(StageError, match=r"stage 'FailOn'.*batch 2.*boom"):
        pipeline.run(ROWS, workspace=workspace, progress="quiet", executor=sequential)
    with RunStore(workspace) as store:
        (run,) = store.runs()
        assert run["status"] == "failed"
        assert set(store.done_batches(run["run_id"], 0)) == {0, 1}
    fixed.touch()
    result = pipeline.run(
        ROWS, workspace=workspace, resume=run["run_id"], progress="quiet", executor=sequential
    )
    assert result.to_arrow()["n"].to_pylist() == list(range(25))
    # batches 0 and 1 ran once; batch 2 ran twice (failed, then resumed); 3 and 4 once
    assert log.read_text().split() == ["0", "5", "10", "10", "15", "20"]
    assert result.funnel()[0]["rows_in"] == 25  # counts of the failed attempt are not kept


def test_a_run_stopped_by_the_user_is_interrupted_and_resumes(workspace, tmp_path) -> None:
    fixed = tmp_path / "fixed"
    pipeline = Pipeline([InterruptOn(bad_id="13", fixed=str(fixed))], batch_size=5)
    sequential = LocalExecutor(batch_size=5, cpu_workers=1)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(ROWS, workspace=workspace, progress="quiet", executor=sequential)
    with RunStore(workspace) as store:
        (run,) = store.runs()
        assert run["status"] == "interrupted"
        assert store.run(run["run_id"])["error"] == (
            f"stopped by the user; resume with --resume {run['run_id']}"
        )
        assert set(store.done_batches(run["run_id"], 0)) == {0, 1}
    fixed.touch()
    result = pipeline.run(
        ROWS, workspace=workspace, resume=run["run_id"], progress="quiet", executor=sequential
    )
    assert result.to_arrow()["n"].to_pylist() == list(range(25))
    with RunStore(workspace) as store:
        assert store.run(run["run_id"])["status"] == "done"


def test_resume_refuses_a_different_pipeline(workspace: Path) -> None:
    first = Pipeline([EvenOnly()], batch_size=5).run(ROWS, workspace=workspace, progress="quiet")
    with pytest.raises(AssayError, match="stages differ"):
        Pipeline([Upper()], batch_size=5).run(ROWS, workspace=workspace, resume=first.run_id)
    with pytest.raises(AssayError, match="no run 'nope'"):
        Pipeline([Upper()]).run(ROWS, workspace=workspace, resume="nope")


def test_resume_accepts_a_parameter_added_since_at_its_default(workspace: Path) -> None:
    """A run recorded before a stage gained a parameter (e.g. Generate's `transport`)
    resumes when the parameter holds its default; set to anything else, it differs."""
    import duckdb

    first = Pipeline([FailOn(bad_id="3")], batch_size=5)
    with pytest.raises(StageError):
        first.run(ROWS, workspace=workspace, progress="quiet")
    with RunStore(workspace) as store:
        (run,) = store.runs()
        config = store.run(run["run_id"])["config"]
    assert "bad_id" in config["stages"][0]["params"]
    del config["stages"][0]["params"]["fixed"]  # as an older version recorded it
    con = duckdb.connect(str(workspace / "assay.duckdb"))
    con.execute("update runs set config = ? where run_id = ?", [json.dumps(config), run["run_id"]])
    con.close()

    with pytest.raises(AssayError, match="stages differ"):  # `fixed` set: not the default
        Pipeline([FailOn(bad_id="3", fixed="/elsewhere")], batch_size=5).run(
            ROWS, workspace=workspace, resume=run["run_id"], progress="quiet"
        )
    resumed = Pipeline([FailOn(bad_id="none")], batch_size=5)
    with pytest.raises(AssayError, match="stages differ"):  # a recorded value changed
        resumed.run(ROWS, workspace=workspace, resume=run["run_id"], progress="quiet")
    same = Pipeline([FailOn(bad_id="3")], batch_size=5)  # `fixed` at its default
    with pytest.raises(StageError, match="boom"):  # resumed: the bad row still fails
        same.run(ROWS, workspace=workspace, resume=run["run_id"], progress="quiet")


def test_runs_are_listed_with_status_and_rows(workspace: Path) -> None:
    Pipeline([EvenOnly()], name="evens", batch_size=5).run(
        ROWS, workspace=workspace, progress="quiet"
    )
    with RunStore(workspace) as store:
        (run,) = store.runs()
    assert run["name"] == "evens" and run["status"] == "done" and run["rows_out"] == 13
