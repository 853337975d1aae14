"""Task-level quality of the local decode paths: the intern SQL evaluation, answered by each.

The embedded SmolLM2-135M answers every question of the intern text-to-SQL task (its
`heldout` and `unseen` splits, 648 questions) with the teacher's few-shot prompt, greedy,
64 tokens, through the real batched backend (`LocalBackend`, batches of 32), once per side:

- `generic`: `ASSAY_LOCAL_FAST=0`, transformers' forward (the reference: today's answers)
- `fast-fp32`: the fast decode path in fp32 (the default)
- `fast-bf16`: the fast path with `ASSAY_LOCAL_PRECISION=bf16`

Each answer's SQL is executed on the task database and its test suite (the job's
`SqlExecutionVerifier`), so the table reports the accuracy each side reaches, how many answers
are identical to the generic path's, and the paired differences (questions one side gets
right and the other wrong). This is the evaluation the intern job runs for its teacher.

    nice python bench/local_quality.py --threads 1 [--limit N] [--sides generic,fast-bf16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch

from assay.curate.llm.types import ChatRequest
from assay.models.local_backend import LocalBackend

SIDES = {
    "generic": {"ASSAY_LOCAL_FAST": "0", "ASSAY_LOCAL_PRECISION": "fp32"},
    "fast-fp32": {"ASSAY_LOCAL_FAST": "1", "ASSAY_LOCAL_PRECISION": "fp32"},
    "fast-bf16": {"ASSAY_LOCAL_FAST": "1", "ASSAY_LOCAL_PRECISION": "bf16"},
}


def main() -> None:
    from assay.datasets.intern_sql import default_database, task_rows
    from assay.jobs.intern_curation import sql_verifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="questions per split (0: all)")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--splits", default="heldout,unseen")
    parser.add_argument(
        "--samples", type=int, default=0, help="seeded samples per question (0: one greedy answer)"
    )
    parser.add_argument("--temperature", type=float, default=0.3, help="with --samples")
    parser.add_argument("--out", default="", help="write the answers and verdicts (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sides = args.sides.split(",")
    questions = [
        row
        for split in args.splits.split(",")
        for row in (task_rows(split, limit=args.limit) if args.limit else task_rows(split))
    ]
    verifier = sql_verifier(default_database(), seed=0, drop_incorrect=False)
    backend = LocalBackend("smollm2-135m", threads=args.threads, device="cpu")
    backend.load()
    if args.samples:  # the intern job's teacher step: seeded samples of every question
        params = {"temperature": args.temperature, "max_tokens": args.max_tokens, "seed": 0}
        rows = [row for row in questions for _ in range(args.samples)]
        indices = [k for _ in questions for k in range(args.samples)]
    else:
        params = {"temperature": 0, "max_tokens": args.max_tokens}
        rows, indices = questions, [0] * len(questions)
    requests = [
        ChatRequest("local/smollm2-135m", tuple(row["teacher_messages"]), params, sample_index=k)
        for row, k in zip(rows, indices, strict=True)
    ]
    answers: dict[str, list[str]] = {}
    correct: dict[str, list[bool]] = {}
    seconds: dict[str, float] = {}
    loads: dict[str, float] = {}
    for side in sides:
        os.environ.update(SIDES[side])
        start = time.perf_counter()
        responses = backend.complete_many(requests)
        seconds[side] = time.perf_counter() - start
        loads[side] = os.getloadavg()[0]
        answers[side] = [r.text or "" for r in responses]
        correct[side] = [
            verifier.check(text, row["gold_sql"], row).correct
            for text, row in zip(answers[side], rows, strict=True)
        ]
        print(
            f"{side}: accuracy {sum(correct[side]) / len(rows):.3f} in {seconds[side]:.0f} s "
            f"(load {loads[side]:.1f})",
            flush=True,
        )
    backend.close()
    n = len(rows)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cpus, torch threads {args.threads}")
    how = f"{args.samples} samples at T={args.temperature}" if args.samples else "greedy"
    print(f"intern-sql {args.splits}: {n} answers, teacher prompt, {how}, {args.max_tokens} tokens")
    reference = sides[0]
    print(
        f"| side | accuracy | stderr | answers equal to {reference}'s | "
        f"right here, wrong there | wrong here, right there | s (load) |"
    )
    print("|---|---|---|---|---|---|---|")
    for side in sides:
        acc = sum(correct[side]) / n
        same = sum(a == b for a, b in zip(answers[side], answers[reference], strict=True))
        gained = sum(a and not b for a, b in zip(correct[side], correct[reference], strict=True))
        lost = sum(b and not a for a, b in zip(correct[side], correct[reference], strict=True))
        print(
            f"| {side} | {acc:.3f} | {math.sqrt(acc * (1 - acc) / n):.3f} | {same}/{n} | "
            f"{gained} | {lost} | {seconds[side]:.0f} ({loads[side]:.1f}) |"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(
                {"ids": [r["id"] for r in rows], "answers": answers, "correct": correct},
                handle,
            )


if __name__ == "__main__":
    main()
