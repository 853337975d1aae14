"""Benchmark: the embedded model as a reasoning-trace teacher (pass rate, traces per minute).

Runs the two traces recipes on documented subsets (fresh generations: the request cache is
bypassed), and on the arithmetic subset a direct-answer baseline (the demo's calculator
prompt, same model, same samples per problem) so the chain-of-thought pass rate has a peer.

    .venv/bin/python bench/traces.py --arith 16 --gsm8k 8 --out bench/out/traces.json

Subsets: arithmetic = the first `--arith` rows of recipes/data/arithmetic.jsonl; GSM8K =
test problems 0 .. `--gsm8k`-1 (recipes/data/traces_gsm8k_subset.jsonl holds 0..15).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent


def _rows(path: Path, limit: int) -> pa.Table:
    lines = path.read_text().splitlines()[:limit]
    return pa.Table.from_pylist([json.loads(line) for line in lines])


def _summary(result: Any, stage: str, seconds: float) -> dict[str, Any]:
    kept = result.to_arrow()
    rejects = result.rejects()
    samples = [kept]
    if rejects.num_rows and "correct" in rejects.column_names:
        mine = rejects.filter(pc.equal(rejects["_stage"], stage))
        samples.append(mine.select([c for c in kept.column_names if c in mine.column_names]))
    allrows = pa.concat_tables(samples, promote_options="permissive").to_pylist()
    rates: dict[str, float] = {}
    for row in allrows:
        if row.get("pass_rate") is not None:
            rates.setdefault(row["parent_id"], row["pass_rate"])
    tokens = sum(int(r.get("generation_output_tokens") or 0) for r in allrows)
    correct = sum(1 for r in allrows if r.get("correct"))
    return {
        "problems": len(rates),
        "samples": len(allrows),
        "correct_samples": correct,
        "mean_pass_rate": round(sum(rates.values()) / len(rates), 4) if rates else None,
        "problems_solved": sum(1 for v in rates.values() if v > 0),
        "kept_traces": kept.num_rows,
        "seconds": round(seconds, 1),
        "traces_per_min": round(kept.num_rows / seconds * 60, 2),
        "samples_per_min": round(len(allrows) / seconds * 60, 2),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / seconds, 2),
    }


def run_recipe(recipe: str, rows: pa.Table, workspace: Path, stage: str) -> dict[str, Any]:
    from assay.curate.recipes import load_recipe

    pipeline = load_recipe(ROOT / "recipes" / recipe)
    started = time.perf_counter()
    result = pipeline.run(rows, workspace=workspace, progress="quiet", no_cache=True)
    return {
        "recipe": recipe,
        "run_id": result.run_id,
        **_summary(result, stage, time.perf_counter() - started),
    }


def direct_baseline(rows: pa.Table, workspace: Path, n: int) -> dict[str, Any]:
    from assay.curate.pipeline import Pipeline
    from assay.judges.answer import AnswerVerifier
    from assay.operators.generate import Generate

    stages = [
        Generate(
            model="local/smollm2-135m",
            system_prompt="You are a calculator. Reply with only the number.",
            prompt="{{ question }}",
            n=n,
            temperature=0.7,
            max_tokens=12,
            seed=0,
        ),
        AnswerVerifier(column="generation", gold_column="answer", drop_incorrect=False),
    ]
    started = time.perf_counter()
    result = Pipeline(stages).run(rows, workspace=workspace, progress="quiet", no_cache=True)
    seconds = time.perf_counter() - started
    out = result.to_arrow().to_pylist()
    by_problem: dict[str, list[bool]] = {}
    for row in out:
        by_problem.setdefault(row["parent_id"], []).append(bool(row["correct"]))
    rates = [sum(v) / len(v) for v in by_problem.values()]
    return {
        "baseline": "direct answer (calculator prompt), AnswerVerifier on the whole answer",
        "problems": len(rates),
        "samples": len(out),
        "correct_samples": sum(sum(v) for v in by_problem.values()),
        "mean_pass_rate": round(sum(rates) / len(rates), 4),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arith", type=int, default=16)
    parser.add_argument("--gsm8k", type=int, default=8)
    parser.add_argument("--baseline-n", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "traces.json")
    args = parser.parse_args()
    from assay.models.shared_backends import get_local_backend, register_local_backend

    register_local_backend()
    get_local_backend("local/smollm2-135m").load()  # loading is not generation time
    workspace = Path(tempfile.mkdtemp(prefix="assay-bench-traces-"))
    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count()}
    arith = _rows(ROOT / "recipes" / "data" / "arithmetic.jsonl", args.arith)
    report["arithmetic"] = run_recipe(
        "traces_arithmetic.yaml", arith, workspace, "00-ReasoningTraces"
    )
    print(json.dumps(report["arithmetic"]), flush=True)
    report["arithmetic_direct_baseline"] = direct_baseline(arith, workspace, args.baseline_n)
    print(json.dumps(report["arithmetic_direct_baseline"]), flush=True)
    if args.gsm8k:
        gsm = _rows(ROOT / "recipes" / "data" / "traces_gsm8k_subset.jsonl", args.gsm8k)
        report["gsm8k"] = run_recipe("traces_gsm8k.yaml", gsm, workspace, "01-ReasoningTraces")
        print(json.dumps(report["gsm8k"]), flush=True)
    report["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
