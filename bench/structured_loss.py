"""Structured output under schema violations: rows kept of 500, assay vs Bespoke Curator.

    .venv/bin/python bench/structured_loss.py
    .venv/bin/python bench/structured_loss.py --before /path/to/older/assay/checkout

One fake OpenAI server process (tests/openai_server.py --json-violation 0.05) answers every
engine: JSON `{"question": ..., "answer": <int>}`, except that 5% of answers, drawn per
request (re-asks and retries included), carry `"answer": "many"`, which breaks the schema.
Each engine asks 500 prompts with the schema as `response_format` and keeps the rows whose
answer validates:

- `assay`: Generate(response_format=Answer) + ParseStructured(Answer), defaults (2 re-asks
  through the row's own settings and parameters), litellm transport;
- `assay-http`: the same over transport="http";
- `assay-no-reask`: ParseStructured(max_reasks=0), what the violations alone cost;
- `assay-before` (with --before): an older checkout, Generate(response_format=Answer) +
  ParseStructured(Answer) with its defaults (as the issue measured it: with no `llm`, no
  re-ask); `assay-before-llm`: the same with `llm=` given, as its docs suggested (one
  re-ask, sent without the row's parameters or response_format);
- `curator`: bespokelabs-curator 0.1.31 (bench/out/.venv-curator, see llm_throughput.py)
  with `response_format=Answer`; an answer that fails validation is retried by Curator.

Every engine runs in its own process with a fresh cache; imports happen before the clock
starts. "requests" is what the server saw from that engine (first asks, re-asks, retries).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CURATOR_PY = ROOT / "bench" / "out" / ".venv-curator" / "bin" / "python"
N = 500
VIOLATION = 0.05
CONCURRENCY = 32
LATENCY = 0.02
ENGINES = ["assay", "assay-http", "assay-no-reask", "assay-before", "assay-before-llm", "curator"]


def run_assay(base: str, n: int, workdir: str, engine: str) -> dict:
    import pyarrow as pa
    from pydantic import BaseModel

    from assay.curate.llm.client import LLMSettings
    from assay.curate.pipeline import Pipeline
    from assay.operators.generate import Generate
    from assay.operators.parse import ParseStructured

    class Answer(BaseModel):
        question: str
        answer: int

    settings = {
        "model": "openai/fake",
        "api_base": base,
        "max_concurrency": CONCURRENCY,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
        "transport": "http" if engine == "assay-http" else "litellm",
    }
    table = pa.table({"id": [f"r{i}" for i in range(n)], "q": [f"question {i}" for i in range(n)]})
    generate = Generate(prompt="{{ q }}", response_format=Answer, **settings)
    if engine == "assay-no-reask":
        parse = ParseStructured(output_schema=Answer, max_reasks=0)
    elif engine == "assay-before-llm":
        parse = ParseStructured(output_schema=Answer, llm=LLMSettings(**settings))
    else:
        parse = ParseStructured(output_schema=Answer)
    from assay.curate.llm import _litellm

    _litellm.get()  # imported before the clock starts (its price table), as Curator's is
    t0 = time.perf_counter()
    result = Pipeline([generate, parse], batch_size=100).run(
        table, workspace=Path(workdir) / "ws", progress="quiet"
    )
    wall = time.perf_counter() - t0
    out = result.to_arrow()
    good = sum(
        a == len(q) for a, q in zip(out["answer"].to_pylist(), out["q"].to_pylist(), strict=True)
    )
    return {
        "rows": out.num_rows,
        "correct": good,
        "rejected": result.rejects().num_rows,
        "wall_s": wall,
    }


def run_curator(base: str, n: int, workdir: str) -> dict:
    os.environ["CURATOR_CACHE_DIR"] = str(Path(workdir) / "curator-cache")
    os.environ.setdefault("TELEMETRY_ENABLED", "false")
    os.environ.setdefault("CURATOR_DISABLE_RICH_DISPLAY", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # Curator's tiktoken encodings come from litellm's bundled copies (offline)

    tokenizers = Path(litellm.__file__).parent / "litellm_core_utils" / "tokenizers"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tokenizers)
    from bespokelabs import curator
    from pydantic import BaseModel

    class Answer(BaseModel):
        question: str
        answer: int

    class Ask(curator.LLM):
        def prompt(self, row: dict) -> str:
            return row["q"]

        def parse(self, row: dict, response: Answer) -> dict:
            return {"q": row["q"], "answer": response.answer}

    llm = Ask(
        model_name="gpt-4o-mini",
        backend="openai",
        response_format=Answer,
        backend_params={
            "base_url": base,
            "api_key": "EMPTY",
            "max_requests_per_minute": 60_000,
            "max_tokens_per_minute": 10**9,
            "max_concurrent_requests": CONCURRENCY,
            "max_retries": 5,
            "require_all_responses": False,
            "seconds_to_pause_on_rate_limit": 1,
        },
    )
    rows = [{"q": f"question {i}"} for i in range(n)]
    t0 = time.perf_counter()
    out = llm(rows)
    wall = time.perf_counter() - t0
    dataset = getattr(out, "dataset", out)
    good = sum(r["answer"] == len(r["q"]) for r in dataset)
    return {"rows": len(dataset), "correct": good, "rejected": n - len(dataset), "wall_s": wall}


def stats(root: str) -> dict:
    with urllib.request.urlopen(f"{root}/stats") as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=ENGINES)
    parser.add_argument("--base")
    parser.add_argument("--workdir")
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--before", type=Path, help="an older assay checkout to measure too")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "structured.json")
    args = parser.parse_args()
    if args.child:
        if args.child == "curator":
            result = run_curator(args.base, args.n, args.workdir)
        else:
            result = run_assay(args.base, args.n, args.workdir, args.child)
        print(json.dumps(result))
        return
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--latency", str(LATENCY)]
        + ["--json-violation", str(VIOLATION), "--seed", "7"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    root = f"http://127.0.0.1:{int(server.stdout.readline())}"
    results = []
    try:
        for engine in ENGINES:
            if engine.startswith("assay-before") and args.before is None:
                continue
            if engine == "curator" and not CURATOR_PY.exists():
                results.append({"engine": engine, "error": "bench/out/.venv-curator missing"})
                continue
            python = str(CURATOR_PY) if engine == "curator" else sys.executable
            code_root = args.before if engine.startswith("assay-before") else ROOT
            before = stats(root)["attempts"]
            with tempfile.TemporaryDirectory() as workdir:
                env = {**os.environ, "PYTHONPATH": str(code_root)}
                cmd = [python, __file__, "--child", engine, "--base", f"{root}/v1"]
                cmd += ["--n", str(args.n), "--workdir", workdir]
                out = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, timeout=900, cwd=code_root
                )
            if out.returncode != 0:
                results.append({"engine": engine, "error": out.stderr[-3000:]})
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result.update(engine=engine, requests=stats(root)["attempts"] - before)
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        server.terminate()
        server.wait()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{args.n} prompts, {VIOLATION:.0%} of answers violate the schema\n")
    print("| engine | rows kept | correct | rejected | requests sent | wall s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['engine']} | failed | | | | |")
            continue
        print(
            f"| {r['engine']} | {r['rows']} / {args.n} | {r['correct']} | {r['rejected']} | "
            f"{r['requests']} | {r['wall_s']:.1f} |"
        )
    for r in results:
        if "error" in r:
            print(f"\n{r['engine']} failed:\n{r['error']}")


if __name__ == "__main__":
    main()
