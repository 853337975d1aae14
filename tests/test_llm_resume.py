"""A run killed with SIGKILL while requests are in flight resumes from the request cache:
every row comes out exactly once and at most `max_concurrency` requests are paid twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from openai_server import FakeOpenAI

from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.operators.generate import Generate

CONCURRENCY = 4
N_ROWS = 120

SCRIPT = """
import sys
from assay.curate.pipeline import Pipeline
from assay.operators.generate import Generate
source, workspace, base = sys.argv[1], sys.argv[2], sys.argv[3]
stage = Generate(model="openai/fake", api_base=base, prompt="Q: {{ text }}", max_concurrency=int(sys.argv[4]))
Pipeline([stage], batch_size=20).run(source, workspace=workspace, progress="quiet")
"""


def test_kill_9_mid_run_then_resume_bills_each_request_about_once(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(N_ROWS))
    )
    workspace = tmp_path / "ws"
    with FakeOpenAI(latency_s=0.02, jitter_s=0.01) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SCRIPT,
                str(source),
                str(workspace),
                server.base_url,
                str(CONCURRENCY),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while server.total_billed < N_ROWS // 2 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        billed_before = server.total_billed
        assert billed_before < N_ROWS, "the run finished before it was killed"

        with RunStore(workspace) as store:
            (run,) = store.runs()
        stage = Generate(
            model="openai/fake",
            api_base=server.base_url,
            prompt="Q: {{ text }}",
            max_concurrency=CONCURRENCY,
        )
        result = Pipeline([stage], batch_size=20).run(
            source, workspace=workspace, resume=run["run_id"], progress="quiet"
        )
    out = result.to_arrow()
    assert sorted(out["id"].to_pylist()) == sorted(f"r{i}" for i in range(N_ROWS))
    assert out["generation"].to_pylist() == [f"echo: Q: t{i}" for i in range(N_ROWS)]
    assert len(server.billed) == N_ROWS  # every prompt reached the server
    assert server.rebilled <= CONCURRENCY
