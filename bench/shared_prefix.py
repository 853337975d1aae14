"""Decode with a long shared prompt prefix: held once for all rows vs copied to every row.

The intern job's teacher reads an ~800-token few-shot prompt (handbook, schema, worked
examples) that every question shares; only the question differs. This times
`generate_batch` on the embedded model with those prompts, `--rows` questions per batch and
`--max-tokens` new tokens each (eos ignored, so both sides decode the same number of steps),
with the shared prefix held once (`prefix_once=True`, the default) and copied per row (the
peer, what the fast loop did before), and checks that the greedy outputs are the same.

    .venv/bin/python bench/shared_prefix.py --rows 32 --max-tokens 48 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from assay.datasets.intern_sql import full_prompt, task_rows
from assay.models.batch_generate import GenerationItem, generate_batch
from assay.models.registry import load_model, resolve_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(resolve_model("smollm2-135m"), device="cpu")
    questions = [r["question"] for r in task_rows("train", limit=args.rows)]
    prompts = [
        tokenizer.apply_chat_template(full_prompt(q), tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def items() -> list[GenerationItem]:
        return [
            GenerationItem(prompt_ids=i, max_new_tokens=args.max_tokens, temperature=0.0,
                           ignore_eos=True)
            for i in ids
        ]  # fmt: skip

    eos = {tokenizer.eos_token_id}
    seconds: dict[str, list[float]] = {"held once": [], "copied per row": []}
    outputs: dict[str, list[list[int]]] = {}
    generate_batch(model, tokenizer, items()[:2], eos)  # warm-up
    for _ in range(args.rounds):
        for side, once in (("held once", True), ("copied per row", False)):
            started = time.perf_counter()
            results = generate_batch(model, tokenizer, items(), eos, prefix_once=once)
            seconds[side].append(time.perf_counter() - started)
            outputs[side] = [r.token_ids for r in results]
    same = sum(a == b for a, b in zip(outputs["held once"], outputs["copied per row"], strict=True))
    tokens = args.rows * args.max_tokens
    report = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "rows": args.rows,
        "prompt_tokens": round(statistics.mean(len(i) for i in ids)),
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "seconds_median": {k: round(statistics.median(v), 2) for k, v in seconds.items()},
        "seconds_all": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "tokens_per_s_median": {
            k: round(tokens / statistics.median(v), 1) for k, v in seconds.items()
        },
        "identical_outputs": f"{same}/{args.rows}",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
