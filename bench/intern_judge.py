"""Can a judge model tell a right SQL query from a wrong one on the intern task?

The intern job's reasoning judge (`assay.jobs.intern.reasoning_judge`, `SQL_RUBRIC`) reads a
question and a query against the handbook. This measures it on `--questions` training
questions, each answered twice: by its gold query (right) and by a wrong query the embedded
teacher actually wrote for it (the first of `--samples` that fails execution match), so the
set is balanced and the wrong answers are the ones curation has to catch. Beside the judge:
the trivial baselines (always pass: balanced accuracy 0.5; the shorter query passes).

    .venv/bin/python bench/intern_judge.py --judge local/smollm2-135m --questions 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from assay.curate.pipeline import Pipeline
from assay.datasets.intern_sql import default_database, task_rows
from assay.jobs.intern import (
    ExtractSql,
    InternProfile,
    curation_stages,
    reasoning_judge,
    sql_verifier,
)
from assay.judges.metrics import classification_metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--judge", default="local/smollm2-135m")
    parser.add_argument("--teacher", default="local/smollm2-135m")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--workspace", default=".assay")
    parser.add_argument("--out", default="bench/results/intern_judge.json")
    args = parser.parse_args()
    # the quick profile's teacher settings: its answers come from the request cache
    profile = InternProfile(samples=args.samples)
    database = default_database(profile.seed)
    source = task_rows("train", limit=240, seed=profile.seed)
    generate = curation_stages(profile, args.teacher, database, False)[0]
    verify = sql_verifier(database, profile.seed, drop_incorrect=False)
    answered = Pipeline([generate, ExtractSql(), verify], batch_size=32).run(
        source, workspace=args.workspace, progress="quiet"
    )
    wrong: dict[str, str] = {}
    for row in answered.to_arrow().to_pylist():
        if not row["correct"] and row["sql"] and row["question"] not in wrong:
            wrong[row["question"]] = row["sql"]
    rows = []
    for r in source:
        if r["question"] in wrong and len(rows) < 2 * args.questions:
            rows.append({"question": r["question"], "sql": r["gold_sql"], "right": True})
            rows.append({"question": r["question"], "sql": wrong[r["question"]], "right": False})
    started = time.perf_counter()
    judged = Pipeline([reasoning_judge(args.judge, threshold=None)], batch_size=16).run(
        rows, workspace=args.workspace, progress="lines"
    )
    seconds = time.perf_counter() - started
    out = judged.to_arrow().to_pylist()
    labels = [r["right"] for r in out]
    scores = [r["judge_score"] for r in out]
    shorter = []
    for right, wrong_ in zip(out[::2], out[1::2], strict=True):
        short_right = len(right["sql"]) <= len(wrong_["sql"])
        shorter += [1.0 if short_right else 0.0, 0.0 if short_right else 1.0]
    report = {
        "judge": args.judge,
        "pairs": len(out) // 2,
        "seconds": round(seconds, 1),
        "judge_metrics": classification_metrics(labels, scores),
        "always_pass": classification_metrics(labels, [1.0] * len(labels)),
        "shorter_query_passes": classification_metrics(labels, shorter),
        "unjudged": sum(s is None for s in scores),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("judge", "pairs", "seconds", "unjudged")}))
    for name in ("judge_metrics", "always_pass", "shorter_query_passes"):
        m = report[name]
        print(f"{name}: balanced accuracy {m['balanced_accuracy']:.3f}, accuracy "
              f"{m['accuracy']:.3f} ± {m['accuracy_se']:.3f}, kappa {m['kappa']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
