"""LLM throughput: assay's Generate vs Bespoke Curator against the same local fake server.

    .venv/bin/python bench/llm_throughput.py --reps 3 --kills 3   # every engine and scenario
    .venv/bin/python bench/llm_throughput.py --only assay --scenario clean

Engines: `assay` (Generate with default settings: the direct transport for this
OpenAI-compatible server), `assay-litellm` (transport="litellm"), `curator`
(bespokelabs-curator's OpenAI online backend).

The server (tests/openai_server.py) enforces its per-minute quota over one-second windows,
as OpenAI documents, with `x-ratelimit-*` headers on every response; latency 200 ms +- 100 ms.
- clean: 2,000 requests, quota 6,000 RPM, client told 6,000 RPM, 100 concurrent.
- overquota: 500 requests, quota 1,200 RPM, client told 1,500 RPM, 100 concurrent, with
  10% 429 (retry-after 1 s), 5% 500, 3% bodies cut off mid-JSON, 1% hangs (every engine
  times a request out after 5 s). "quota 429s" counts the 429s the quota provoked.
- kill: 1,000 requests as in clean, the engine's process killed with SIGKILL 5 s in, then
  run again on the same cache: "bought twice" is answers the server billed twice, next to
  the requests in flight at the server when the kill came.

Each engine runs in its own process (assay from .venv, Curator from
bench/out/.venv-curator, installed with `pip install bespokelabs-curator`, not a dependency
of assay) with a fresh cache; the server runs in a third process, so CPU seconds are the
engine's alone. CPU is measured around the run itself (imports excluded, reported apart).
The physical bound is max(requests / server quota, requests x mean latency / concurrency);
"of bound" is bound / wall (1.0 = as fast as the server allows). In the kill scenario the
wall time is the rerun's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CURATOR_PY = ROOT / "bench" / "out" / ".venv-curator" / "bin" / "python"
CONCURRENCY = 100
LATENCY, JITTER = 0.2, 0.1
TIMEOUT_S = 5
KILL_AFTER_S = 5.0
ENGINES = ["assay", "assay-litellm", "curator"]
FAULTS = "429=0.10,500=0.05,malformed=0.03,hang=0.01"
SCENARIOS = {
    "clean": {"n": 2000, "quota": 6000, "rpm": 6000, "mix": ""},
    "overquota": {"n": 500, "quota": 1200, "rpm": 1500, "mix": FAULTS},
    "kill": {"n": 1000, "quota": 6000, "rpm": 6000, "mix": ""},
}


def bound_s(n: int, quota: float) -> float:
    """The physical bound: the server's quota, or latency x requests / concurrency."""
    return max(n / (quota / 60), n * LATENCY / CONCURRENCY)


# --- engines (run in a child process; print one JSON line) ---------------------------


def run_assay(base: str, n: int, workdir: str, rpm: float, transport: str = "auto") -> dict:
    t_import = time.perf_counter()
    from assay.curate.llm import _litellm
    from assay.curate.pipeline import Pipeline
    from assay.operators.generate import Generate

    _litellm.get()
    import pyarrow as pa

    import_s = time.perf_counter() - t_import
    table = pa.table({"id": [f"r{i}" for i in range(n)], "q": [f"question {i}" for i in range(n)]})
    stage = Generate(
        model="openai/fake",
        api_base=base,
        prompt="{{ q }}",
        rpm=rpm,
        max_concurrency=CONCURRENCY,
        timeout_s=TIMEOUT_S,
        max_attempts=6,
        retry_initial_s=0.5,
        retry_max_s=4.0,
        retry_jitter_s=0.5,
        transport=transport,
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    result = Pipeline([stage], batch_size=1000).run(
        table, workspace=Path(workdir) / "ws", progress="quiet"
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = result.to_arrow().num_rows
    return {"wall_s": wall, "cpu_s": cpu, "rows": rows, "import_s": import_s}


def run_curator(base: str, n: int, workdir: str, rpm: float) -> dict:
    os.environ["CURATOR_CACHE_DIR"] = str(Path(workdir) / "curator-cache")
    os.environ.setdefault("TELEMETRY_ENABLED", "false")
    os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # Curator counts tokens with tiktoken, which downloads its encodings on first use;
    # point it at the copies bundled inside litellm (a Curator dependency) to stay offline
    import litellm

    tokenizers = Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tokenizers)
    t_import = time.perf_counter()
    from bespokelabs import curator

    import_s = time.perf_counter() - t_import

    class Answer(curator.LLM):
        def prompt(self, row: dict) -> str:
            return row["q"]

        def parse(self, row: dict, response: str) -> dict:
            return {"q": row["q"], "a": response}

    llm = Answer(
        model_name="gpt-4o-mini",
        backend="openai",
        backend_params={
            "base_url": base,
            "api_key": "EMPTY",
            "max_requests_per_minute": rpm,
            "max_tokens_per_minute": 10**9,
            "max_concurrent_requests": CONCURRENCY,
            "request_timeout": TIMEOUT_S,
            "max_retries": 5,
            "require_all_responses": False,
            "seconds_to_pause_on_rate_limit": 1,
        },
    )
    rows = [{"q": f"question {i}"} for i in range(n)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = llm(rows)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    dataset = getattr(out, "dataset", out)
    return {"wall_s": wall, "cpu_s": cpu, "rows": len(dataset), "import_s": import_s}


# --- driver -----------------------------------------------------------------------------


def start_server(mix: str, quota: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "openai_server.py"),
            "--latency",
            str(LATENCY),
            "--jitter",
            str(JITTER),
            "--mix",
            mix,
            "--retry-after",
            "1",
            "--seed",
            "7",
            "--quota-rpm",
            str(quota),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def child_args(engine: str, root: str, spec: dict, workdir: str) -> list[str]:
    python = str(CURATOR_PY) if engine == "curator" else sys.executable
    args = [python, __file__, "--child", engine, "--base", f"{root}/v1"]
    return args + ["--n", str(spec["n"]), "--workdir", workdir, "--rpm", str(spec["rpm"])]


def server_stats(root: str) -> dict:
    with urllib.request.urlopen(f"{root}/stats") as response:
        return json.loads(response.read())


def wait_for_first_request(root: str, proc: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while server_stats(root)["attempts"] == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the engine sent no request before the kill")
        time.sleep(0.02)


def run_engine(engine: str, scenario: str, rep: int = 0) -> dict:
    spec = SCENARIOS[scenario]
    server, root = start_server(spec["mix"], spec["quota"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed: dict = {}
    try:
        with tempfile.TemporaryDirectory() as workdir:
            args = child_args(engine, root, spec, workdir)
            if scenario == "kill":
                proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
                # 5 s after the engine's first request reaches the server (its imports take
                # 1-8 s with the load: timed from the start, a kill could land before any
                # request), plus a random part of a second, so kills land anywhere in the
                # engines' one-second send cycles (seeded: the same moments for every engine)
                wait_for_first_request(root, proc)
                time.sleep(KILL_AFTER_S + random.Random(rep).uniform(0, 1))
                before = server_stats(root)
                proc.kill()
                proc.wait()
                killed = {"in_flight_at_kill": before["in_flight"]}
                killed["billed_at_kill"] = server_stats(root)["total_billed"]
            out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            return {"engine": engine, "scenario": scenario, "error": out.stderr[-2000:]}
        result = json.loads(out.stdout.strip().splitlines()[-1])
        stats = server_stats(root)
    finally:
        server.terminate()
        server.wait()
    n = spec["n"]
    result.update(
        killed,
        engine=engine,
        scenario=scenario,
        requests=n,
        bound_s=bound_s(n, spec["quota"]),
        of_bound=bound_s(n, spec["quota"]) / result["wall_s"],
        cpu_per_1k=result["cpu_s"] / n * 1000,
        attempts=stats["attempts"],
        billed=stats["total_billed"],
        rebilled=stats["rebilled"],
        quota_429s=stats["quota_429s"],
        faults=stats["faults"],
    )
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| scenario | engine | rep | rows done | wall s | bound s | of bound | "
        "CPU s / 1k req | attempts | quota 429s | bought twice | in flight at kill |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['scenario']} | {r['engine']} | failed: see below |" + " |" * 9)
            continue
        lines.append(
            f"| {r['scenario']} | {r['engine']} | {r['rep']} | {r['rows']} | "
            f"{r['wall_s']:.2f} | {r['bound_s']:.2f} | {r['of_bound']:.3f} | "
            f"{r['cpu_per_1k']:.2f} | {r['attempts']} | {r['quota_429s']} | "
            f"{r['rebilled']} | {r.get('in_flight_at_kill', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=ENGINES)
    parser.add_argument("--base")
    parser.add_argument("--n", type=int)
    parser.add_argument("--workdir")
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--reps", type=int, default=1, help="repetitions of clean/overquota")
    parser.add_argument("--kills", type=int, default=1, help="repetitions of kill")
    parser.add_argument("--only", choices=ENGINES)
    parser.add_argument("--scenario", choices=list(SCENARIOS))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "llm.json")
    args = parser.parse_args()
    if args.child:
        if args.child == "curator":
            result = run_curator(args.base, args.n, args.workdir, args.rpm)
        else:
            transport = "litellm" if args.child == "assay-litellm" else "auto"
            result = run_assay(args.base, args.n, args.workdir, args.rpm, transport)
        print(json.dumps(result))
        return
    engines = [args.only] if args.only else ENGINES
    scenarios = [args.scenario] if args.scenario else list(SCENARIOS)
    results = []
    for scenario in scenarios:
        # engines alternate within each repetition, so load on the shared machine hits all
        for rep in range(args.kills if scenario == "kill" else args.reps):
            for engine in engines:
                if engine == "curator" and not CURATOR_PY.exists():
                    results.append({"engine": engine, "scenario": scenario, "error": "missing"})
                    continue
                r = run_engine(engine, scenario, rep)
                r["rep"] = rep + 1
                print(json.dumps(r), flush=True)
                results.append(r)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    for r in results:
        if "error" in r:
            print(f"\n{r['engine']} / {r['scenario']} failed:\n{r['error']}")
    print(f"\nmax RSS of children: {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} KB")


if __name__ == "__main__":
    main()
