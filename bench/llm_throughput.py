"""LLM throughput: assay's Generate vs Bespoke Curator against the same local fake server.

    .venv/bin/python bench/llm_throughput.py            # both engines, both scenarios
    .venv/bin/python bench/llm_throughput.py --only assay

Engines: `assay` (Generate through litellm, the default transport), `assay-http`
(Generate with transport="http": straight to the OpenAI-compatible server over aiohttp),
`curator` (bespokelabs-curator's OpenAI online backend).

Scenarios (server latency 200 ms +- 100 ms, uniform):
- clean: 2,000 requests at 6,000 RPM, 64 concurrent.
- faults: 1,000 requests at 6,000 RPM with 10% 429 (retry-after 1 s), 5% 500, 3% bodies
  cut off mid-JSON, 1% hangs (both engines time a request out after 5 s).

Each engine runs in its own process (assay from .venv, Curator from
bench/out/.venv-curator, installed with `pip install bespokelabs-curator`, not a dependency
of assay) with a fresh cache; the server runs in a third process, so CPU seconds are the
engine's alone. CPU is measured around the run itself (imports excluded, reported apart).
The physical bound is max(requests / rate limit, requests x mean latency / concurrency);
"of bound" is bound / wall (1.0 = as fast as physics allows). With faults, the bound also
counts every retried try against the rate limit and one request timeout for the hangs
("of bound with faults").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CURATOR_PY = ROOT / "bench" / "out" / ".venv-curator" / "bin" / "python"
RPM = 6000
CONCURRENCY = 64
LATENCY, JITTER = 0.2, 0.1
TIMEOUT_S = 5
# assay through litellm (the default transport), assay's direct OpenAI-compatible
# transport, and the peer
ENGINES = ["assay", "assay-http", "curator"]
SCENARIOS = {
    "clean": {"n": 2000, "mix": ""},
    "faults": {"n": 1000, "mix": "429=0.10,500=0.05,malformed=0.03,hang=0.01"},
}


def bound_s(n: int) -> float:
    return max(n / (RPM / 60), n * LATENCY / CONCURRENCY)


def fault_bound_s(attempts: int, hangs: int) -> float:
    """With faults: every try the server saw had to pass the limiter, and a hung request
    cannot finish before its timeout (plus one clean try after it)."""
    return bound_s(attempts) + (TIMEOUT_S + LATENCY if hangs else 0.0)


# --- engines (run in a child process; print one JSON line) ---------------------------


def run_assay(base: str, n: int, workdir: str, transport: str = "litellm") -> dict:
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
        rpm=RPM,
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


def run_curator(base: str, n: int, workdir: str) -> dict:
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
            "max_requests_per_minute": RPM,
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


def start_server(mix: str) -> tuple[subprocess.Popen, str]:
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
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def run_engine(engine: str, scenario: str) -> dict:
    spec = SCENARIOS[scenario]
    server, root = start_server(spec["mix"])
    try:
        python = str(CURATOR_PY) if engine == "curator" else sys.executable
        with tempfile.TemporaryDirectory() as workdir:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            args = [python, __file__, "--child", engine, "--base", f"{root}/v1"]
            args += ["--n", str(spec["n"]), "--workdir", workdir]
            out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        if out.returncode != 0:
            return {"engine": engine, "scenario": scenario, "error": out.stderr[-2000:]}
        result = json.loads(out.stdout.strip().splitlines()[-1])
        with urllib.request.urlopen(f"{root}/stats") as response:
            stats = json.loads(response.read())
    finally:
        server.terminate()
        server.wait()
    n = spec["n"]
    result.update(
        engine=engine,
        scenario=scenario,
        requests=n,
        bound_s=bound_s(n),
        of_bound=bound_s(n) / result["wall_s"],
        fault_bound_s=fault_bound_s(stats["attempts"], stats["faults"].get("hang", 0)),
        of_fault_bound=fault_bound_s(stats["attempts"], stats["faults"].get("hang", 0))
        / result["wall_s"],
        cpu_per_1k=result["cpu_s"] / n * 1000,
        attempts=stats["attempts"],
        billed=stats["total_billed"],
        rebilled=stats["rebilled"],
        faults=stats["faults"],
    )
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| scenario | engine | requests | rows done | wall s | bound s | of bound | "
        "of bound with faults | CPU s / 1k req | attempts | re-billed | import s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['scenario']} | {r['engine']} | failed: see below |" + " |" * 9)
            continue
        lines.append(
            f"| {r['scenario']} | {r['engine']} | {r['requests']} | {r['rows']} | "
            f"{r['wall_s']:.2f} | {r['bound_s']:.2f} | {r['of_bound']:.3f} | "
            f"{r['of_fault_bound']:.3f} | "
            f"{r['cpu_per_1k']:.2f} | {r['attempts']} | {r['rebilled']} | {r['import_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=ENGINES)
    parser.add_argument("--base")
    parser.add_argument("--n", type=int)
    parser.add_argument("--workdir")
    parser.add_argument("--only", choices=ENGINES)
    parser.add_argument("--scenario", choices=list(SCENARIOS))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "llm.json")
    args = parser.parse_args()
    if args.child:
        if args.child == "curator":
            result = run_curator(args.base, args.n, args.workdir)
        else:
            transport = "http" if args.child == "assay-http" else "litellm"
            result = run_assay(args.base, args.n, args.workdir, transport)
        print(json.dumps(result))
        return
    engines = [args.only] if args.only else ENGINES
    scenarios = [args.scenario] if args.scenario else list(SCENARIOS)
    results = []
    for scenario in scenarios:
        for engine in engines:
            if engine == "curator" and not CURATOR_PY.exists():
                results.append({"engine": engine, "scenario": scenario, "error": "not installed"})
                continue
            r = run_engine(engine, scenario)
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
