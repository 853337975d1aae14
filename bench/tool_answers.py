"""ToolAnswerGroundingJudge on hand-labelled answers of real tool trajectories, beside baselines.

    .venv/bin/python bench/tool_answers.py extract RUN_ID -w WORKSPACE --out answers.jsonl
    # label each line: "label": "grounded" (every claim the turn's tools or the user support)
    # or "not"; lines left null are skipped
    .venv/bin/python bench/tool_answers.py score answers.jsonl --model local/smollm2-135m

`extract` writes every answer of a ToolRollouts run (assistant text that ends a turn), of
the kept trajectories and of the dropped attempts (`episode.dropped_attempts`), one line
each with the turn's messages, distinct answers to the same turn once. `score` runs the
judge on the labelled lines (each line's messages are a one-turn trajectory) and prints
accuracy and balanced accuracy beside two trivial rules: every answer grounded, and every
word of the answer (3+ letters, or a number) found in the user's message or the turn's
tool calls and results.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any


def turn_slices(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Each user turn's messages (from the user's message to the turn's answer)."""
    turns: list[list[dict[str, Any]]] = []
    for m in messages:
        if m["role"] == "user":
            turns.append([])
        if turns:
            turns[-1].append({k: v for k, v in m.items() if v is not None})
    return turns


def extract(run_id: str, workspace: str, out: str) -> None:
    from assay.curate.pipeline import RunResult
    from assay.curate.store import RunStore

    with RunStore(workspace, read_only=True) as store:
        run_dir = Path(store.run(run_id)["run_dir"])
    rows = RunResult(run_id=run_id, run_dir=run_dir, workspace=Path(workspace)).to_arrow()
    seen, lines = set(), []
    for row in rows.to_pylist():
        messages = row["messages"]
        episode = json.loads(row["episode"])
        tries = [("kept", messages)]
        for d in episode.get("dropped_attempts", []):
            tries.append(("dropped", messages[: d["at_message"]] + d["messages"]))
        for source, trajectory in tries:
            for turn, part in enumerate(turn_slices(trajectory)):
                answer = part[-1] if part[-1]["role"] == "assistant" else None
                if answer is None or answer.get("tool_calls") or not answer.get("content"):
                    continue
                key = json.dumps(part, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                lines.append(
                    {
                        "task": row["id"],
                        "source": source,
                        "turn": turn,
                        "answer": answer["content"],
                        "messages": part,
                        "label": None,
                    }
                )
    Path(out).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    print(f"{len(lines)} answers -> {out}")


_WORD = re.compile(r"[A-Za-z]{3,}|\d+(?:\.\d+)?")


def overlap_rule(messages: list[dict[str, Any]]) -> bool:
    """Grounded when every word of the answer appears in the turn's other messages."""
    context = " ".join(
        (m.get("content") or "") + json.dumps(m.get("tool_calls") or "") for m in messages[:-1]
    ).lower()
    return all(w.lower() in context for w in _WORD.findall(messages[-1]["content"]))


def metrics(truth: list[bool], said: list[bool]) -> str:
    acc = sum(t == s for t, s in zip(truth, said, strict=True)) / len(truth)
    pos = [s for t, s in zip(truth, said, strict=True) if t]
    neg = [not s for t, s in zip(truth, said, strict=True) if not t]
    rates = [sum(x) / len(x) for x in (pos, neg) if x]
    return f"accuracy {acc:.3f}, balanced accuracy {sum(rates) / len(rates):.3f}"


def score(path: str, model: str) -> None:
    import pyarrow as pa

    from assay.judges.llm_judge import run_sync
    from assay.judges.tool_answers import ToolAnswerGroundingJudge

    lines = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    lines = [x for x in lines if x.get("label") in ("grounded", "not")]
    truth = [x["label"] == "grounded" for x in lines]
    print(f"{len(lines)} labelled answers: {sum(truth)} grounded, {len(truth) - sum(truth)} not")
    print("every answer grounded:", metrics(truth, [True] * len(truth)))
    print("word overlap rule:    ", metrics(truth, [overlap_rule(x["messages"]) for x in lines]))
    judge = ToolAnswerGroundingJudge(model=model)
    start = time.perf_counter()
    table = pa.table({"messages": [x["messages"] for x in lines]})
    judged = run_sync(judge.judge_rows(table.to_pylist()))
    seconds = time.perf_counter() - start
    said = [j.score == 1.0 for j in judged]
    unscored = sum(j.score is None for j in judged)
    print(f"{model} judge:  ", metrics(truth, said), f"({unscored} unscored, {seconds:.0f} s)")
    for x, j in zip(lines, judged, strict=True):
        print(f"  {x['label']:>8} {j.verdict:>12}  {x['answer'][:70]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("run_id")
    ex.add_argument("-w", "--workspace", default=".assay")
    ex.add_argument("--out", required=True)
    sc = sub.add_parser("score")
    sc.add_argument("answers")
    sc.add_argument("--model", default="local/smollm2-135m")
    args = parser.parse_args()
    if args.command == "extract":
        extract(args.run_id, args.workspace, args.out)
    else:
        score(args.answers, args.model)


if __name__ == "__main__":
    main()
