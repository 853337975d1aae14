"""A segment's output held in memory for the next segment (`LocalExecutor(hold_bytes=...)`):
the same batches, fingerprints and results as reading its shards, which are still written;
the budget bounds what is held; a resume reads the shards."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from engine_stages import FailOn, Upper

from assay.curate.errors import StageError
from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.operators.dedupe.exact import ExactDedupe

N = 600
ROWS = pa.table(
    {
        "text": [f"text {i % 250}" for i in range(N)],  # every text 2-3 times
        "n": list(range(N)),
        "score": [None if i % 7 == 0 else i / 3 for i in range(N)],
        "tags": [["a", str(i % 3)] for i in range(N)],
    }
)


def _pipeline(fail_on: str = "", fixed: str = "") -> Pipeline:
    stages = [Upper(), ExactDedupe(columns=["upper"])]
    if fail_on:
        stages.append(FailOn(bad_id=fail_on, fixed=fixed))
    return Pipeline(stages, batch_size=50)


def _count_shard_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every scratch shard (under work/) opened for reading."""
    opened: list[str] = []
    real = pq.ParquetFile

    def counting(source, *args, **kwargs):  # noqa: ANN001, ANN202
        if "/work/" in str(source):
            opened.append(Path(source).name)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counting)
    return opened


def _run(workspace: Path, hold_bytes: int, workers: int = 2) -> tuple[pa.Table, pa.Table]:
    executor = LocalExecutor(50, cpu_workers=workers, hold_bytes=hold_bytes)
    result = _pipeline().run(ROWS, workspace=workspace, progress="quiet", executor=executor)
    return result.to_arrow(), result.rejects().sort_by("id")


def test_held_output_is_read_from_memory_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _count_shard_reads(monkeypatch)
    from_shards = _run(tmp_path / "a", hold_bytes=0)
    assert len(opened) == 2 * (N // 50)  # the fit's pass and the batches' pass
    opened.clear()
    held = _run(tmp_path / "b", hold_bytes=1 << 30)
    assert opened == []  # both passes from memory
    assert held[0].equals(from_shards[0]) and held[1].equals(from_shards[1])
    assert held[0].num_rows == 250 and held[1].num_rows == N - 250
    # the scratch shards are written either way (a resume reads them)
    (run_dir,) = (tmp_path / "b" / "runs").iterdir()
    assert len(list((run_dir / "work" / "seg-0").glob("part-*.parquet"))) == N // 50


def test_the_budget_bounds_what_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _count_shard_reads(monkeypatch)
    one_batch = Upper().process(ROWS.slice(0, 50).add_column(0, "id", pa.array(["x"] * 50)))
    budget = 3 * one_batch.get_total_buffer_size() + 10  # about three of the twelve
    out, rejects = _run(tmp_path / "ws", hold_bytes=budget, workers=1)
    assert 0 < len(opened) < 2 * (N // 50)
    assert len(opened) >= 2 * (N // 50 - 4)
    assert out.num_rows == 250 and rejects.num_rows == N - 250


def test_resume_reads_the_shards_and_matches_the_held_fingerprints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, fixed = tmp_path / "ws", tmp_path / "fixed"
    sequential = LocalExecutor(50, cpu_workers=1, hold_bytes=1 << 30)
    # the second segment fails at its third batch: its first two are committed, their
    # fingerprints taken from the tables held in memory
    with pytest.raises(StageError, match="boom"):
        _pipeline(fail_on="120", fixed=str(fixed)).run(
            ROWS, workspace=workspace, progress="quiet", executor=sequential
        )
    with RunStore(workspace) as store:
        (run,) = store.runs()
        assert set(store.done_batches(run["run_id"], 1)) == {0, 1}
    fixed.touch()
    opened = _count_shard_reads(monkeypatch)
    # a new process holds nothing: the resume reads the shards, and the committed batches'
    # fingerprints must match what it reads (else it would refuse to resume)
    result = _pipeline(fail_on="120", fixed=str(fixed)).run(
        ROWS, workspace=workspace, resume=run["run_id"], progress="quiet", executor=sequential
    )
    assert len(opened) == 2 * (N // 50)
    out = result.to_arrow()
    assert out.num_rows == 250
    assert out["n"].to_pylist() == list(range(250))  # first of each text, in source order
    expected = _run(tmp_path / "fresh", hold_bytes=0)[0]
    assert out.drop_columns(["id"]).equals(expected.drop_columns(["id"]))
