"""Judges on HaluEval: train the distilled judges, evaluate them beside the baselines, check
what they read, and time them.

    .venv/bin/python bench/judges.py train --subset dialogue --layers 3 --other-contexts random
    .venv/bin/python bench/judges.py eval --subset dialogue --judge distilled:halueval-dialogue
    .venv/bin/python bench/judges.py diagnose --subset dialogue --judge halueval-dialogue
    flock /tmp/assay-bench.lock .venv/bin/python bench/judges.py speed --subset dialogue \
        --judge halueval-dialogue --threads 2
    .venv/bin/python bench/judges.py eval --subset dialogue --judge GroundingJudge --limit 10 \
        --params '{"max_claims": 3, "max_tokens": 160}'

`train` fits a cross-encoder from all-MiniLM-L6-v2 on the set's train split (both answers of
each pair; `--pairs` for the first N pairs only), calibrates it on the validation split and
registers it as `halueval-<set>` (or `--name`); it checkpoints every `--checkpoint-every`
steps, and `--resume` continues a stopped run from its checkpoint. `eval` runs `assay judge-eval` on the test
split (`--limit` first pairs) and writes the report (markdown, JSON, PNGs) under
bench/out/judges/<set>-<judge>/. `diagnose` measures, on the test split (`--split validation` for choices), what the
distilled judge's ranking rests on: the pairs where the hallucinated answer is the shorter
one, the answers scored against another row's context, and a response-only baseline (TF-IDF
logistic regression on the train split's answers, no context: how far style alone goes).
`speed` times `DistilledJudge.scores` (what judge-eval and the stage run) on the test rows
with `--threads` torch threads: rows per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any


def train(args: argparse.Namespace) -> None:
    from assay.datasets.halueval import as_responses, load_halueval
    from assay.judges.distill_train import train_distilled

    rows = as_responses(load_halueval(args.subset, "train", limit=args.pairs))
    validation = as_responses(load_halueval(args.subset, "validation", limit=args.val))
    started = time.monotonic()
    name = args.name or f"halueval-{args.subset}"
    load = os.getloadavg()
    path = train_distilled(
        rows,
        name=name,
        max_length=args.max_length,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        freeze_layers=args.freeze_layers,
        freeze_embeddings=True,
        layers=args.layers,
        base_model=args.base_model,
        seed=args.seed,
        pairwise_weight=args.pairwise_weight,
        other_contexts=args.other_contexts,
        select=args.select,
        prompt_tokens=args.prompt_tokens,
        bf16=args.bf16,
        inference_dtype=args.dtype,
        validation=validation,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        description=f"HaluEval {args.subset}: {len(rows) // 2} train pairs, calibrated on "
        f"{len(validation) // 2} validation pairs",
        log=lambda line: print(line, flush=True),
    )
    print(
        f"trained {path} in {time.monotonic() - started:.0f}s (load average at start "
        f"{load[0]:.1f}, at end {os.getloadavg()[0]:.1f})",
        flush=True,
    )


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
    print(f"load average {os.getloadavg()[0]:.1f}")


def _pairwise(good: list[float], bad: list[float]) -> float:
    if not good:
        return float("nan")
    return sum(
        1.0 if g > b else 0.5 if g == b else 0.0 for g, b in zip(good, bad, strict=True)
    ) / len(good)


def style_scores(subset: str, rows: list[dict[str, Any]]) -> list[float]:
    """A response-only classifier: TF-IDF words and bigrams of the answer, no context,
    logistic regression fitted on the train split's answers."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from assay.datasets.halueval import as_responses, load_halueval

    fit = as_responses(load_halueval(subset, "train"))  # type: ignore[arg-type]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    features = vectorizer.fit_transform([r["response"] for r in fit])
    model = LogisticRegression(C=4.0, max_iter=2000)
    model.fit(features, [bool(r["grounded"]) for r in fit])
    return model.decision_function(vectorizer.transform([r["response"] for r in rows])).tolist()


def diagnose(args: argparse.Namespace) -> None:
    from assay.datasets.halueval import as_responses, load_halueval
    from assay.judges.baselines import length_score
    from assay.judges.distilled import DistilledJudge

    pairs = load_halueval(args.subset, args.split, limit=args.limit)
    rows = as_responses(pairs)
    judge = DistilledJudge(
        judge=args.judge,
        response_column="response",
        prompt_column="prompt",
        threads=args.threads,
        dtype=args.dtype,
        select=args.select,
    )
    own = [j.score for j in judge.scores(rows)]
    rng = random.Random(0)
    others = list(range(len(pairs)))
    rng.shuffle(others)
    swapped = [
        dict(r, context=pairs[others[k // 2]]["context"]) for k, r in enumerate(rows)
    ]  # both answers of a pair against the same other pair's context
    moved = [j.score for j in judge.scores(swapped)]
    style = style_scores(args.subset, rows)
    _, chunker, _ = judge.load()
    budget = chunker.max_length // 2
    fits = [
        k
        for k in range(len(pairs))
        if max(len(chunker._ids(rows[2 * k + j]["response"])) for j in (0, 1)) <= budget
    ]
    length = [length_score(r["response"]) for r in rows]
    shorter = [k for k in range(len(pairs)) if length[2 * k + 1] > length[2 * k]]
    keep = [k for k in range(len(pairs)) if others[k] != k]

    def pw(scores: list[float], subset: list[int] | None = None) -> float:
        ks = range(len(pairs)) if subset is None else subset
        return _pairwise([scores[2 * k] for k in ks], [scores[2 * k + 1] for k in ks])

    report = {
        "set": args.subset,
        "judge": args.judge,
        "dtype": args.dtype or "judge default",
        "select": args.select or "judge default",
        "split": args.split,
        "pairs": len(pairs),
        "pairwise": {"judge": pw(own), "length": pw(length), "style (response only)": pw(style)},
        "hallucinated_shorter": {
            "pairs": len(shorter),
            "judge": pw(own, shorter),
            "length": pw(length, shorter),
            "style (response only)": pw(style, shorter),
        },
        "both_answers_within_the_claim_budget": {
            "budget_tokens": budget,
            "pairs": len(fits),
            "judge": pw(own, fits),
            "length": pw(length, fits),
            "style (response only)": pw(style, fits),
        },
        "other_context": {
            "pairs": len(keep),
            "pairwise_both_answers_on_another_context": pw(moved, keep),
            "correct_answer_own_context_above_other": _pairwise(
                [own[2 * k] for k in keep], [moved[2 * k] for k in keep]
            ),
            "mean_score_correct_own_context": sum(own[2 * k] for k in keep) / len(keep),
            "mean_score_correct_other_context": sum(moved[2 * k] for k in keep) / len(keep),
            "mean_score_hallucinated_own_context": sum(own[2 * k + 1] for k in keep) / len(keep),
        },
        "load_average": round(os.getloadavg()[0], 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{args.split}-{args.dtype or 'default'}-{args.select or 'default'}"
    target = out / f"diagnose-{args.subset}-{args.judge}-{tag}.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    scores = [
        {"id": r["id"], "judge": a, "other_context": b, "style": c}
        for r, a, b, c in zip(rows, own, moved, style, strict=True)
    ]
    target.with_suffix(".scores.json").write_text(json.dumps(scores) + "\n")
    print(json.dumps(report, indent=2))


def speed(args: argparse.Namespace) -> None:
    """Wall-clock rows/s of `DistilledJudge.scores` on the first test rows (model loaded
    first, as judge-eval times it), with `--threads` torch threads."""
    import torch

    from assay.datasets.halueval import as_responses, load_halueval
    from assay.judges.distilled import DistilledJudge

    torch.set_num_threads(args.threads)
    rows = as_responses(load_halueval(args.subset, "test", limit=args.limit))
    judge = DistilledJudge(
        judge=args.judge,
        response_column="response",
        prompt_column="prompt",
        threads=args.threads,
        batch_size=args.batch_size,
        dtype=args.dtype,
        select=args.select,
    )
    judge.load()
    judge.scores(rows[:4])  # load the model and warm up
    results = []
    for _ in range(args.repeats):
        load = os.getloadavg()[0]
        cpu, wall = time.process_time(), time.monotonic()
        out = judge.scores(rows)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        results.append((len(rows) / wall, len(rows) / cpu * args.threads, load))
    pieces = sum(j.extra["chunks"] for j in out) / len(out)
    best = max(results)
    print(
        json.dumps(
            {
                "set": args.subset,
                "judge": args.judge,
                "rows": len(rows),
                "threads": args.threads,
                "batch_size": args.batch_size,
                "dtype": args.dtype or "judge default",
                "select": args.select or "judge default",
                "pieces_per_row": round(pieces, 2),
                "rows_per_s_wall": [round(r[0], 1) for r in results],
                "rows_per_cpu_s_times_threads": [round(r[1], 1) for r in results],
                "load_average_before_each": [round(r[2], 2) for r in results],
                "best_rows_per_s": round(best[0], 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sets = ["qa", "dialogue", "summarization"]
    t = sub.add_parser("train")
    t.add_argument("--subset", required=True, choices=sets)
    t.add_argument("--name", default=None)
    t.add_argument("--pairs", type=int, default=None, help="first N train pairs (default all)")
    t.add_argument("--val", type=int, default=None, help="first N validation pairs (default all)")
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--prompt-tokens", type=int, default=64)
    t.add_argument("--select", default="evidence", choices=["all", "best", "evidence"])
    t.add_argument("--layers", type=int, default=3)
    t.add_argument(
        "--base-model",
        default="all-MiniLM-L6-v2",
        help="the encoder to start from: all-MiniLM-L6-v2 or a local folder (e.g. a trained "
        "judge's, to train it further)",
    )
    t.add_argument("--seed", type=int, default=0, help="batch order and other-context draws")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--learning-rate", type=float, default=1e-4)
    t.add_argument("--freeze-layers", type=int, default=0)
    t.add_argument("--pairwise-weight", type=float, default=1.0)
    t.add_argument("--other-contexts", default=None, choices=["random", "similar"])
    t.add_argument("--bf16", action="store_true", help="bf16 autocast while training")
    t.add_argument("--dtype", default="int8", choices=["float32", "bfloat16", "int8"])
    t.add_argument("--threads", type=int, default=1)
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="save the training state every N steps (0: never), beside the judges",
    )
    t.add_argument(
        "--resume", action="store_true", help="continue from the judge's checkpoint if there is one"
    )
    e = sub.add_parser("eval")
    e.add_argument("--subset", required=True, choices=sets)
    e.add_argument("--judge", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--model", default="local/smollm2-135m")
    e.add_argument("--params", default="", help='judge parameters as JSON, e.g. {"max_claims": 3}')
    e.add_argument("--out", default="bench/out/judges")
    d = sub.add_parser("diagnose")
    d.add_argument("--subset", required=True, choices=sets)
    d.add_argument("--judge", required=True, help="a trained judge's name")
    d.add_argument("--limit", type=int, default=None)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "int8"])
    d.add_argument("--select", default=None, choices=["all", "best", "evidence"])
    d.add_argument("--split", default="test", choices=["validation", "test"])
    d.add_argument("--out", default="bench/out/judges")
    p = sub.add_parser("speed")
    p.add_argument("--subset", required=True, choices=sets)
    p.add_argument("--judge", required=True, help="a trained judge's name")
    p.add_argument("--limit", type=int, default=300, help="first N test pairs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "int8"])
    p.add_argument("--select", default=None, choices=["all", "best", "evidence"])
    p.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    {"train": train, "eval": evaluate, "diagnose": diagnose, "speed": speed}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
