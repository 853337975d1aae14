"""Engine behaviour under concurrency, inside event loops, at commit time and in the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pytest

from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
from assay.curate.registry import get_stage, register
from assay.curate.stage import Map
from assay.curate.store import RunStore

ROWS = [{"id": str(i), "n": i, "text": f"row {i}"} for i in range(40)]


class MeetInPairs(Map):
    """Waits until a second batch is inside `map` too: it only passes if batches overlap."""

    barrier: ClassVar[threading.Barrier] = threading.Barrier(2, timeout=20)

    def map(self, table: pa.Table) -> pa.Table:
        self.barrier.wait()  # BrokenBarrierError after 20 s if batches ran one at a time
        return table.append_column("thread", pa.array([threading.get_ident()] * table.num_rows))


def test_cpu_batches_run_concurrently_and_keep_source_order(workspace: Path) -> None:
    MeetInPairs.barrier.reset()
    result = Pipeline([MeetInPairs()]).run(
        ROWS, workspace=workspace, progress="quiet", executor=LocalExecutor(10, cpu_workers=2)
    )
    out = result.to_arrow()
    assert out["n"].to_pylist() == list(range(40))
    assert len(set(out["thread"].to_pylist())) == 2


def test_one_cpu_worker_runs_batches_one_after_another(workspace: Path) -> None:
    MeetInPairs.barrier.reset()
    barrier = MeetInPairs.barrier
    MeetInPairs.barrier = threading.Barrier(2, timeout=1)
    try:
        with pytest.raises(Exception, match="BrokenBarrierError"):
            Pipeline([MeetInPairs()]).run(
                ROWS,
                workspace=workspace,
                progress="quiet",
                executor=LocalExecutor(10, cpu_workers=1),
            )
    finally:
        MeetInPairs.barrier = barrier


class Upper(Map):
    def map(self, table: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        return table.set_column(2, "text", pc.utf8_upper(table["text"]))


def test_run_inside_a_running_event_loop(workspace: Path) -> None:
    async def notebook_cell() -> list[str]:
        result = Pipeline([Upper()], batch_size=16).run(ROWS, workspace=workspace, progress="quiet")
        return result.to_arrow()["text"].to_pylist()

    texts = asyncio.run(notebook_cell())
    assert texts == [f"ROW {i}" for i in range(40)]


def test_shards_and_their_folder_are_fsynced_before_the_batch_is_committed(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_commit = os.fsync, RunStore.commit_batches

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("dir:" if os.path.isdir(path) else "file:") + Path(path).name)
        real_fsync(fd)

    def recording_commit(self: RunStore, run_id: str, batches: list) -> None:
        if batches:
            events.append(f"commit:{[b.batch for b in batches]}")
        real_commit(self, run_id, batches)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(RunStore, "commit_batches", recording_commit)
    Pipeline([Upper()], batch_size=40).run(ROWS, workspace=workspace, progress="quiet")
    commit = events.index("commit:[0]")
    before = events[:commit]
    assert "file:part-000000.parquet.tmp" in before  # the file, under its temporary name
    assert "dir:output" in before  # the rename, made durable by the folder's fsync


def test_cli_error_text_is_not_read_as_markup(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: x\nsource: rows.jsonl\nstages:\n  - '[bold]Nope[/bold]': {}\n")
    (tmp_path / "rows.jsonl").write_text('{"id": "1", "text": "a"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "assay.curate.cli", "run", str(recipe), "-w", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2
    assert "[bold]Nope[/bold]" in done.stderr  # printed as written, not as bold "Nope"


def test_registering_the_same_class_again_replaces_it() -> None:
    namespace: dict[str, object] = {}
    source = (
        "from assay.curate.registry import register\n"
        "from assay.curate.stage import Map\n"
        "@register\n"
        "class NotebookStage(Map):\n"
        "    def map(self, table):\n"
        "        return table\n"
    )
    for _ in range(2):  # a notebook cell run twice
        exec(compile(source, "<cell>", "exec"), {"__name__": "notebook"}, namespace)
    assert get_stage("NotebookStage") is namespace["NotebookStage"]

    class NotebookStage(Map):  # a different class under a taken name is still refused
        def map(self, table: pa.Table) -> pa.Table:
            return table

    with pytest.raises(ValueError, match="taken"):
        register(NotebookStage)


def test_cpu_workers_leave_fsyncs_and_commits_to_the_calling_thread(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the workers write shards under temporary names; the calling thread makes them durable
    # (fsync, rename) and commits, so no worker waits on the disk or on DuckDB
    threads: dict[str, set[int]] = {"fsync": set(), "commit": set()}
    real_fsync, real_commit = os.fsync, RunStore.commit_batches

    def recording_fsync(fd: int) -> None:
        threads["fsync"].add(threading.get_ident())
        real_fsync(fd)

    def recording_commit(self: RunStore, run_id: str, batches: list) -> None:
        threads["commit"].add(threading.get_ident())
        real_commit(self, run_id, batches)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(RunStore, "commit_batches", recording_commit)
    MeetInPairs.barrier.reset()
    result = Pipeline([MeetInPairs()]).run(
        ROWS, workspace=workspace, progress="quiet", executor=LocalExecutor(10, cpu_workers=2)
    )
    workers = set(result.to_arrow()["thread"].to_pylist())
    assert len(workers) == 2
    assert threads["fsync"] == threads["commit"] == {threading.get_ident()}
    assert not list(result.run_dir.rglob("*.tmp"))  # every shard published under its name
