"""Tool rollouts on the embedded model: rollouts per minute and pass rate (the baseline).

Runs the tool recipes with `local/smollm2-135m`, each in a fresh workspace (no cached
answers): `sql` (recipes/tools_sql.yaml), `sql_free` (the same tasks, the model left to call
tools by itself: no force_tools), `sql_intern`, `bfcl` (recipes/tools_bfcl.yaml: 20 BFCL v4
multi-turn base tasks, ids multi_turn_base_0, _10, ..., _190), `bfcl_first_turn` and
`bfcl_turn_retries` (recipes/tools_bfcl_turn_retries.yaml: failed turns played again). It
prints, per run: episodes, wall seconds, rollouts per minute, model calls, tool calls, pass
rate (`correct`), mean reward, how episodes ended, the tool-discipline rate (SQL), the load
average before and after; and trivial baselines scored by the same environments without a
model (`--baselines`): SQL answered without calling a tool, BFCL with no call in any turn,
and the ground truth replayed (the ceiling).

    nice -n 10 .venv/bin/python bench/tools.py --only sql bfcl_first_turn --baselines
    nice -n 10 .venv/bin/python bench/tools.py --only bfcl --limit 3   # a smaller run
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
RECIPES = {
    "sql": ROOT / "recipes/tools_sql.yaml",
    "sql_free": ROOT / "recipes/tools_sql.yaml",
    "sql_intern": ROOT / "recipes/tools_sql_intern.yaml",
    "bfcl": ROOT / "recipes/tools_bfcl.yaml",
    "bfcl_first_turn": ROOT / "recipes/tools_bfcl_first_turn.yaml",
    "bfcl_turn_retries": ROOT / "recipes/tools_bfcl_turn_retries.yaml",
    "bfcl_first_turn_one_call": ROOT / "recipes/tools_bfcl_first_turn.yaml",
}
# runs that read another task list than their recipe's
SOURCES = {
    "bfcl_first_turn_one_call": ROOT / "recipes/data/tools_bfcl_base_first_turn_one_call.jsonl"
}


def _called(episode: dict[str, object]) -> list[str]:
    return [t["name"] for c in episode["calls"] for t in c.get("tools", [])]  # type: ignore[union-attr]


def _ground_truth_names(task_id: str, turns: int | None) -> set[str]:
    from assay.datasets import bfcl

    truth = bfcl.task_by_id(task_id)["ground_truth"]
    truth = json.loads(truth) if isinstance(truth, str) else truth
    return {c.split("(", 1)[0] for turn in truth[:turns] for c in turn}


def run(
    name: str, limit: int | None, overrides: dict[str, object], source: str | None = None
) -> dict[str, object]:
    """Run one recipe (its first `limit` tasks; stage parameters overridden) from scratch."""
    pipeline = load_recipe(RECIPES[name])
    if name == "sql_free":
        overrides = {"force_tools": 0, "generation_kwargs": {}, "system_prompt": None, **overrides}
    pipeline.stages = [pipeline.stages[0].model_copy(update=overrides), *pipeline.stages[1:]]
    path = Path(source) if source else SOURCES.get(name, Path(str(pipeline.source)))
    tasks = [json.loads(line) for line in path.read_text().splitlines()]
    tasks = tasks[:limit] if limit else tasks
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"bench-tools-{name}-") as tmp:
        start = time.perf_counter()
        result = pipeline.run(tasks, workspace=Path(tmp) / "ws", progress="quiet")
        seconds = time.perf_counter() - start
        rows = result.to_arrow().to_pylist()
    episodes = [json.loads(r["episode"]) for r in rows]
    tool_calls = sum(len(c.get("tools", [])) for e in episodes for c in e["calls"])
    stage = pipeline.stages[0]
    correct = [(r, e) for r, e in zip(rows, episodes, strict=True) if r["correct"]]
    out: dict[str, object] = {
        "tasks": [t["id"] for t in tasks],
        "torch_threads": _threads(),
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
        "tasks_solved": len({r["parent_id"] for r in rows if r["correct"]}),
        # turns played again (turn_retries): the dropped attempts' model calls are counted
        # in model_calls and in the wall time
        "dropped_attempts": sum(len(e.get("dropped_attempts", [])) for e in episodes),
        "correct_with_a_tool_call": sum(1 for _, e in correct if _called(e)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    if name.startswith("sql"):
        inspected = [e["final_state"]["inspected_before_query"] for e in episodes]
        out["inspected_before_query"] = round(sum(inspected) / len(rows), 3)
        # correct episodes whose last query returned the gold result (not a lucky answer)
        out["correct_after_a_query"] = sum(
            1 for _, e in correct if e["final_state"].get("last_result") is not None
        )
    else:
        turns = stage.environment_kwargs.get("first_turns")
        out["correct_calling_a_ground_truth_function"] = sum(
            1
            for r, e in correct
            if set(_called(e)) & _ground_truth_names(str(r["parent_id"]), turns)
        )
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def baselines(limit: int | None) -> dict[str, object]:
    """Trivial policies scored by the environments themselves (no model)."""
    from assay.operators.tools.bfcl_calls import openai_call
    from assay.operators.tools.bfcl_env import BfclEnvironment
    from assay.operators.tools.sql_env import SqlEnvironment

    out: dict[str, object] = {}
    for name in ("sql", "sql_intern"):
        pipeline = load_recipe(RECIPES[name])
        stage = pipeline.stages[0]
        tasks = [json.loads(x) for x in Path(str(pipeline.source)).read_text().splitlines()]
        tasks = tasks[:limit] if limit else tasks
        env = SqlEnvironment(**stage.environment_kwargs)
        passed = {"no_tools_empty_answer": 0, "no_tools_answer_0": 0, "gold_sql_replayed": 0}
        for task in tasks:
            for policy in passed:
                env.reset(task)
                if policy == "gold_sql_replayed":
                    env.step({"function": {"name": "list_tables", "arguments": "{}"}})
                    env.step(
                        {
                            "function": {
                                "name": "run_query",
                                "arguments": json.dumps({"sql": task["gold_sql"]}),
                            }
                        }
                    )
                    env.end_turn(", ".join(str(v) for r in env.last_result.rows for v in r))
                else:
                    env.end_turn("" if policy == "no_tools_empty_answer" else "0")
                passed[policy] += env.score().correct
        out[name] = {
            "tasks": len(tasks),
            **{k: round(v / len(tasks), 3) for k, v in passed.items()},
        }
    for name, first_turns in (
        ("bfcl", None),
        ("bfcl_first_turn", 1),
        ("bfcl_first_turn_one_call", 1),
        ("bfcl_turn_retries", None),
    ):
        pipeline = load_recipe(RECIPES[name])
        path = SOURCES.get(name, Path(str(pipeline.source)))
        tasks = [json.loads(x) for x in path.read_text().splitlines()]
        tasks = tasks[:limit] if limit else tasks
        env = BfclEnvironment(first_turns=first_turns)
        passed = {"no_calls": 0, "ground_truth_replayed": 0}
        for task in tasks:
            for policy in passed:
                env.reset(task)
                for turn in env.task["ground_truth"]:
                    if policy == "ground_truth_replayed" and turn:
                        env.step_calls([openai_call(c, env.docs, i) for i, c in enumerate(turn)])
                    env.end_turn("done")
                passed[policy] += env.score().correct
        out[name] = {
            "tasks": len(tasks),
            **{k: round(v / len(tasks), 3) for k, v in passed.items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", nargs="*", choices=sorted(RECIPES), help="runs (none: only --baselines)"
    )
    parser.add_argument("--baselines", action="store_true", help="score the trivial policies")
    parser.add_argument("--limit", type=int, help="first N tasks of each recipe's source")
    parser.add_argument("--n", type=int, help="episodes per task (recipe's by default)")
    parser.add_argument("--max-turns", type=int, help="model calls per episode")
    parser.add_argument("--source", help="task list (JSONL) instead of the recipe's")
    parser.add_argument("--out", default=str(ROOT / "bench/results/tools.json"))
    args = parser.parse_args()
    overrides: dict[str, object] = {
        k: v for k, v in {"n": args.n, "max_turns": args.max_turns}.items() if v is not None
    }
    names = ["sql", "bfcl"] if args.only is None else args.only
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": {},
    }
    if args.baselines:
        results["baselines"] = baselines(args.limit)
        print("baselines", json.dumps(results["baselines"]), flush=True)
    for name in names:
        results["runs"][name] = run(name, args.limit, overrides, args.source)  # type: ignore[index]
        print(name, json.dumps(results["runs"][name]), flush=True)  # type: ignore[index]
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
