"""Every response that arrived is durable before it counts: a run killed with SIGKILL buys
again at most the requests that were in flight, even when no DuckDB group had committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from openai_server import FakeOpenAI

from assay.curate.llm.cache import LogRow, RequestCache, cache_for
from assay.curate.llm.journal import FOLDER
from assay.curate.llm.types import ChatRequest, ChatResponse
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.operators.generate import Generate

N_ROWS = 60

# groups of 32 and a flush timer of a minute: nothing reaches DuckDB before the kill, so
# only the journal can keep the answers that arrived
SCRIPT = """
import sys
import assay.curate.llm.cache as cache
cache.FLUSH_EVERY_S = 60.0
from assay.curate.pipeline import Pipeline
from assay.operators.generate import Generate
source, workspace, base = sys.argv[1], sys.argv[2], sys.argv[3]
stage = Generate(model="openai/fake", api_base=base, prompt="Q: {{ text }}",
                 max_concurrency=64, rpm=600)
Pipeline([stage], batch_size=1000).run(source, workspace=workspace, progress="quiet")
"""


def stage(base: str) -> Generate:
    return Generate(
        model="openai/fake", api_base=base, prompt="Q: {{ text }}", max_concurrency=64, rpm=600
    )


def test_kill_9_before_any_commit_rebuys_only_what_was_in_flight(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(N_ROWS))
    )
    workspace = tmp_path / "ws"
    with FakeOpenAI(latency_s=0.02) as server:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        args = [sys.executable, "-c", SCRIPT, str(source), str(workspace), server.base_url]
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while server.total_billed < 15 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.005)
        in_flight = server.in_flight
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        in_flight = max(in_flight, server.in_flight)
        billed_before = server.total_billed
        assert 15 <= billed_before < N_ROWS, "the run finished before it was killed"
        journaled = sum(len(p.read_text().splitlines()) for p in (workspace / FOLDER).iterdir())
        # answers the server had sent but the client not yet read were in flight too: at
        # 600 RPM (bursts of one second's quota) at most 10 at a time
        unread = billed_before - journaled
        assert unread <= 10

        with RunStore(workspace) as store:
            (run,) = store.runs()
        result = Pipeline([stage(server.base_url)], batch_size=1000).run(
            source, workspace=workspace, resume=run["run_id"], progress="quiet"
        )
    out = result.to_arrow()
    assert sorted(out["id"].to_pylist()) == sorted(f"r{i}" for i in range(N_ROWS))
    assert len(server.billed) == N_ROWS
    # bought twice: only what was in flight (on the wire, or answered but not yet read)
    assert server.rebilled <= in_flight + unread
    assert server.rebilled <= 10  # without the journal: every answer since the start (>= 15)
    assert list((workspace / FOLDER).glob("*.jsonl")) == [] or all(
        p.stat().st_size == 0 for p in (workspace / FOLDER).glob("*.jsonl")
    )


def req(text: str) -> ChatRequest:
    return ChatRequest(model="openai/m", messages=({"role": "user", "content": text},))


def test_a_torn_line_is_skipped_and_committed_rows_are_not_folded_in_twice(
    tmp_path: Path,
) -> None:
    import asyncio

    from assay.curate.llm.cache import request_json, response_json
    from assay.curate.llm.journal import Journal

    workspace = tmp_path / "ws"
    with RunStore(workspace) as store:
        cache = RequestCache(store.con, workspace)
        kept = ChatResponse(text="kept", input_tokens=3, output_tokens=2, cost=0.5)
        log = LogRow("run", 0, "k-committed", "openai/m", kept)
        asyncio.run(cache.put(req("a"), "k-committed", kept, log))  # committed
        committed = list(store.con.execute("select * from llm_cache").fetchone())
        # a dead process's journal: the committed row again, one only journaled, a torn line
        dead = Journal(workspace)
        dead.append(committed, log.values)
        lost = ChatResponse(text="recovered", input_tokens=1, output_tokens=1, cost=0.25)
        row = ["k-journaled", "openai/m", request_json(req("b")), response_json(lost)]
        row.append(committed[4])
        dead.append(row, LogRow("run", 0, "k-journaled", "openai/m", lost).values)
        dead.close()
        with open(dead.path, "a") as f:
            f.write('[["k-torn", "openai/m", "{')
        dead_path = dead.path.with_name("999999-0.jsonl")  # another process's
        dead.path.rename(dead_path)
        recovered = RequestCache(store.con, workspace)
        assert recovered.replayed == 1
        found = recovered.get_many(["k-committed", "k-journaled", "k-torn"])
        assert {k: r.text for k, r in found.items()} == {
            "k-committed": "kept",
            "k-journaled": "recovered",
        }
        logs = store.con.execute(
            "select request_key, count(*), sum(cost) from request_log group by 1 order by 1"
        ).fetchall()
        assert logs == [("k-committed", 1, 0.5), ("k-journaled", 1, 0.25)]
        assert not dead_path.exists()


def test_cache_for_a_store_journals_in_its_workspace(tmp_path: Path) -> None:
    import asyncio

    with RunStore(tmp_path / "ws") as store:
        cache = cache_for(store)
        asyncio.run(cache.put(req("j"), "k", ChatResponse(text="x"), None, max_pending=1))
        files = list((tmp_path / "ws" / FOLDER).glob("*.jsonl"))
        assert len(files) == 1
        assert files[0].stat().st_size == 0  # the group committed: the journal is empty
        assert cache.get_many(["k"])["k"].text == "x"
