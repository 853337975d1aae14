"""Judges on HaluEval: train the distilled judges, then evaluate them beside the baselines.

    .venv/bin/python bench/judges.py train --subset dialogue --pairs 500
    .venv/bin/python bench/judges.py eval --subset dialogue --judge distilled:halueval-dialogue --limit 500
    .venv/bin/python bench/judges.py eval --subset dialogue --judge GroundingJudge --limit 10 \
        --params '{"max_claims": 3, "max_tokens": 160}'

    .venv/bin/python bench/judges.py speed --subset dialogue --pairs 50

`train` fits a cross-encoder from all-MiniLM-L6-v2 on the first `--pairs` pairs of the set's
train split (both answers of each pair) and registers it as `halueval-<set>`. `eval` runs
`assay judge-eval` on the first `--limit` pairs of the test split and writes the report
(markdown, JSON, PNGs) under bench/out/judges/<set>-<judge>/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def train(args: argparse.Namespace) -> None:
    from assay.datasets.halueval import as_responses, load_halueval
    from assay.judges.distill_train import train_distilled

    rows = as_responses(load_halueval(args.subset, "train", limit=args.pairs))
    started = time.monotonic()
    path = train_distilled(
        rows,
        name=f"halueval-{args.subset}",
        max_length=args.max_length,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        freeze_layers=args.freeze_layers,
        threads=args.threads,
        description=f"HaluEval {args.subset}, first {args.pairs} train pairs",
        log=lambda line: print(line, flush=True),
    )
    print(f"trained {path} in {time.monotonic() - started:.0f}s", flush=True)


def evaluate(args: argparse.Namespace) -> None:
    from assay.judges.evaluate import evaluate_on_data, write_report

    out = Path(args.out) / f"{args.subset}-{args.judge.replace(':', '-')}"
    result = evaluate_on_data(
        args.judge,
        f"halueval:{args.subset}",
        split="test",
        limit=args.limit,
        model=args.model,
        params=json.loads(args.params) if args.params else None,
    )
    write_report(result, out)
    print((out / "report.md").read_text())


def speed(args: argparse.Namespace) -> None:
    """Rows per CPU-second of a distilled judge with one torch thread (robust to a loaded
    machine, unlike wall time), on the first validation rows of a set."""
    import torch

    from assay.datasets.halueval import as_responses, load_halueval
    from assay.judges.distilled import DistilledJudge

    torch.set_num_threads(1)
    rows = as_responses(load_halueval(args.subset, "validation", limit=args.pairs))
    judge = DistilledJudge(
        judge=f"halueval-{args.subset}", response_column="response", prompt_column="prompt"
    )
    judge.scores(rows[:2])  # load the model first
    cpu, wall = time.process_time(), time.monotonic()
    out = judge.scores(rows)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    chunks = sum(j.extra["chunks"] for j in out) / len(out)
    print(
        f"{args.subset}: {len(rows)} rows, {chunks:.1f} chunks/row, {len(rows) / cpu:.1f} rows "
        f"per CPU-second, {len(rows) / wall:.1f} rows/s wall"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--subset", required=True, choices=["qa", "dialogue", "summarization"])
    t.add_argument("--pairs", type=int, default=800)
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--learning-rate", type=float, default=2e-4)
    t.add_argument("--freeze-layers", type=int, default=3)
    t.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("eval")
    e.add_argument("--subset", required=True, choices=["qa", "dialogue", "summarization"])
    e.add_argument("--judge", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--model", default="local/smollm2-135m")
    e.add_argument("--params", default="", help='judge parameters as JSON, e.g. {"max_claims": 3}')
    e.add_argument("--out", default="bench/out/judges")
    p = sub.add_parser("speed")
    p.add_argument("--subset", required=True, choices=["qa", "dialogue", "summarization"])
    p.add_argument("--pairs", type=int, default=50)
    args = parser.parse_args()
    {"train": train, "eval": evaluate, "speed": speed}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
