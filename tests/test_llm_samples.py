"""Generate(n>1): a sample whose request fails for good is rejected on its own (with its
reason) and every other sample is kept, also across a kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
from openai_server import FakeOpenAI

from assay.curate.llm.types import sample_seed
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.operators.generate import Generate

FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.02, "retry_jitter_s": 0.0, "max_attempts": 2}
SEED = 3


def failing(server: FakeOpenAI):
    """Every try of r1's sample 1 and of both samples of r4 answers 500."""

    def script(key: str, attempt: int) -> str | None:
        body = server.bodies[-1]
        q = body["messages"][-1]["content"]
        if q.endswith(" 4") or (q.endswith(" 1") and body.get("seed") == sample_seed(SEED, 1)):
            return "500"
        return None

    return script


def test_a_failed_sample_is_rejected_and_every_other_sample_kept(workspace: Path) -> None:
    table = pa.table({"id": [f"r{i}" for i in range(6)], "q": [f"q {i}" for i in range(6)]})
    server = FakeOpenAI()
    server.script = failing(server)
    with server:
        stage = Generate(
            model="openai/fake", api_base=server.base_url, prompt="{{ q }}", n=2, seed=SEED, **FAST
        )
        result = Pipeline([stage], batch_size=3).run(table, workspace=workspace, progress="quiet")
    out = result.to_arrow()
    expected = [f"r{i}/s{k}" for i in range(6) for k in range(2) if i != 4 and (i, k) != (1, 1)]
    assert out["id"].to_pylist() == expected
    assert out["parent_id"].to_pylist() == [i.split("/")[0] for i in expected]
    rejects = result.rejects()
    assert sorted(rejects["id"].to_pylist()) == ["r1/s1", "r4/s0", "r4/s1"]
    assert sorted(rejects["parent_id"].to_pylist()) == ["r1", "r4", "r4"]
    assert all("llm request failed" in r and "500" in r for r in rejects["_reason"].to_pylist())


SCRIPT = """
import sys
from assay.curate.pipeline import Pipeline
from assay.operators.generate import Generate
source, workspace, base = sys.argv[1], sys.argv[2], sys.argv[3]
stage = Generate(model="openai/fake", api_base=base, prompt="{{ q }}", n=2, seed=3,
                 max_concurrency=4, retry_initial_s=0.01, retry_max_s=0.02, retry_jitter_s=0.0,
                 max_attempts=2)
Pipeline([stage], batch_size=10).run(source, workspace=workspace, progress="quiet")
"""


def test_failed_samples_survive_kill_9_and_resume(tmp_path: Path) -> None:
    n_rows = 60
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "q": f"q {i}"}) + "\n" for i in range(n_rows))
    )
    workspace = tmp_path / "ws"
    server = FakeOpenAI(latency_s=0.02)
    server.script = failing(server)
    with server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        args = [sys.executable, "-c", SCRIPT, str(source), str(workspace), server.base_url]
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while server.total_billed < n_rows // 2 and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the run stopped on its own: {proc.stderr.read()[-2000:]}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert server.total_billed < 2 * n_rows, "the run finished before it was killed"
        with RunStore(workspace) as store:
            (run,) = store.runs()
        stage = Generate(
            model="openai/fake",
            api_base=server.base_url,
            prompt="{{ q }}",
            n=2,
            seed=SEED,
            max_concurrency=4,
            **FAST,
        )
        result = Pipeline([stage], batch_size=10).run(
            source, workspace=workspace, resume=run["run_id"], progress="quiet"
        )
    out_ids = result.to_arrow()["id"].to_pylist()
    failed = {"r1/s1", "r4/s0", "r4/s1"}
    assert sorted(out_ids) == sorted(
        f"r{i}/s{k}" for i in range(n_rows) for k in range(2) if f"r{i}/s{k}" not in failed
    )
    rejects = result.rejects()
    assert sorted(rejects["id"].to_pylist()) == sorted(failed)
