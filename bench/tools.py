"""Tool rollouts on the embedded model: rollouts per minute and pass rate (the baseline).

Runs recipes/tools_sql.yaml (18 shop questions x 2 episodes) and recipes/tools_bfcl.yaml
(20 BFCL v4 multi-turn base tasks: ids multi_turn_base_0, _10, ..., _190) with
`local/smollm2-135m`, each in a fresh workspace (no cached answers), and writes
bench/results/tools.md: episodes, wall seconds, rollouts per minute, model calls, tool calls,
pass rate (`correct`), mean reward, how episodes ended, and the tool-discipline rate (SQL).

    nice .venv/bin/python bench/tools.py            # both
    nice .venv/bin/python bench/tools.py --only sql
    .venv/bin/python bench/tools.py --limit 5 --n 1 --max-turns 4   # a smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

from assay.curate.recipes import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"sql": ROOT / "recipes/tools_sql.yaml", "bfcl": ROOT / "recipes/tools_bfcl.yaml"}


def run(name: str, limit: int | None, overrides: dict[str, int]) -> dict[str, object]:
    """Run one recipe (its first `limit` tasks; stage parameters overridden) from scratch."""
    pipeline = load_recipe(RECIPES[name])
    pipeline.stages = [pipeline.stages[0].model_copy(update=overrides), *pipeline.stages[1:]]
    tasks = [json.loads(line) for line in Path(str(pipeline.source)).read_text().splitlines()]
    tasks = tasks[:limit] if limit else tasks
    with tempfile.TemporaryDirectory(prefix=f"bench-tools-{name}-") as tmp:
        start = time.perf_counter()
        result = pipeline.run(tasks, workspace=Path(tmp) / "ws", progress="quiet")
        seconds = time.perf_counter() - start
        rows = result.to_arrow().to_pylist()
    episodes = [json.loads(r["episode"]) for r in rows]
    tool_calls = sum(len(c.get("tools", [])) for e in episodes for c in e["calls"])
    stage = pipeline.stages[0]
    out: dict[str, object] = {
        "tasks": [t["id"] for t in tasks],
        "n": stage.n,
        "max_turns": stage.max_turns,
        "max_tokens": stage.max_tokens,
        "episodes": len(rows),
        "seconds": round(seconds, 1),
        "rollouts_per_min": round(len(rows) / seconds * 60, 2),
        "model_calls": sum(r["turns"] for r in rows),
        "tool_calls": tool_calls,
        "pass_rate": round(sum(r["correct"] for r in rows) / len(rows), 3),
        "mean_reward": round(sum(r["reward"] for r in rows) / len(rows), 3),
        "finish": dict(Counter(r["finish"] for r in rows)),
    }
    if name == "sql":
        inspected = [e["final_state"]["inspected_before_query"] for e in episodes]
        out["inspected_before_query"] = round(sum(inspected) / len(rows), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(RECIPES))
    parser.add_argument("--limit", type=int, help="first N tasks of each recipe's source")
    parser.add_argument("--n", type=int, help="episodes per task (recipe's by default)")
    parser.add_argument("--max-turns", type=int, help="model calls per episode")
    parser.add_argument("--out", default=str(ROOT / "bench/results/tools.json"))
    args = parser.parse_args()
    overrides = {
        k: v for k, v in {"n": args.n, "max_turns": args.max_turns}.items() if v is not None
    }
    names = [args.only] if args.only else ["sql", "bfcl"]
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": {}}
    for name in names:
        results["runs"][name] = run(name, args.limit, overrides)
        print(name, json.dumps(results["runs"][name]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
