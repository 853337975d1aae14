"""A run killed with SIGKILL mid-run resumes from its last committed batch: every row comes
out exactly once and no committed batch is computed again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from assay.curate.executors.segment_run import COMMIT_INTERVAL_S
from assay.curate.store import RunStore

# two workers, each batch >= 0.05 s: this many shards take more than one commit interval, so
# at least one commit has happened by then (batches finishing within the interval share one)
SHARDS_BEFORE_KILL = int(COMMIT_INTERVAL_S / 0.05 * 2) + 20

SCRIPT = """
import sys
from engine_stages import SlowLog, EvenOnly
from assay.curate.executors.local import LocalExecutor
from assay.curate.pipeline import Pipeline
source, workspace, log, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] or None
pipeline = Pipeline([SlowLog(log=log, seconds=0.05), EvenOnly()], batch_size=5)
executor = LocalExecutor(5, cpu_workers=2)
result = pipeline.run(
    source, workspace=workspace, resume=resume, progress="quiet", executor=executor
)
print(result.run_id)
"""


def _start(tmp_path: Path, source: Path, workspace: Path, log: Path, resume: str = ""):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(source), str(workspace), str(log), resume],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_then_resume_yields_every_row_once(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    n_rows = 5 * (SHARDS_BEFORE_KILL + 60)
    source.write_text("".join(json.dumps({"n": i, "text": f"t{i}"}) + "\n" for i in range(n_rows)))
    workspace, log = tmp_path / "ws", tmp_path / "log"

    proc = _start(tmp_path, source, workspace, log)
    deadline = time.monotonic() + 120
    output = None
    while time.monotonic() < deadline:
        runs = list((workspace / "runs").glob("*/output")) if workspace.exists() else []
        if runs and len(list(runs[0].glob("part-*.parquet"))) >= SHARDS_BEFORE_KILL:
            output = runs[0]
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    assert output is not None, f"the run never finished {SHARDS_BEFORE_KILL} batches"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    run_id = output.parent.name
    with RunStore(workspace) as store:
        committed = set(store.done_batches(run_id, 0))
        assert store.run(run_id)["status"] == "running"  # killed: nobody marked it
    # shards land before their commit: the uncommitted ones are simply redone
    assert 1 <= len(committed) < n_rows // 5  # some committed, some left for the resume

    before = len(log.read_text().split())
    resumed = _start(tmp_path, source, workspace, log, resume=run_id)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert out.strip() == run_id

    with RunStore(workspace) as store:
        assert store.run(run_id)["status"] == "done"
        ids = [
            r[0]
            for r in store.con.execute(
                f"select id from read_parquet('{output}/part-*.parquet')"
            ).fetchall()
        ]
        rejected = [
            r[0]
            for r in store.con.execute(
                "select row_id from rejects where run_id = ?", [run_id]
            ).fetchall()
        ]
    assert sorted(ids, key=int) == [str(i) for i in range(0, n_rows, 2)]  # each kept row once
    assert sorted(rejected, key=int) == [str(i) for i in range(1, n_rows, 2)]  # each reject once
    recomputed = {int(line) // 5 for line in log.read_text().split()[before:]}
    assert not recomputed & committed, "committed batches were computed again"
    assert recomputed | committed == set(range(n_rows // 5))
