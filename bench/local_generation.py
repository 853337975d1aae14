"""Local generation tokens/s: the batched backend vs `model.generate` one prompt at a time.

Same model (the embedded SmolLM2-135M), same prompts, greedy, every answer exactly
`--max-tokens` tokens long (`ignore_eos` / `min_new_tokens`), same run. The batched side goes
through the real backend path: N concurrent `LocalBackend.complete` calls that its scheduler
turns into padded batches. On a shared machine the load drifts, so the two sides are
interleaved: each round runs the batched backend on all prompts, then `model.generate` one
prompt at a time on the round's share of the prompts; rates are totals over all rounds.

    nice python bench/local_generation.py --prompts 32 --max-tokens 48 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

import torch

from assay.curate.llm.types import ChatRequest
from assay.models.local_backend import LocalBackend

TOPICS = [
    "the moon",
    "bread",
    "rivers",
    "chess",
    "volcanoes",
    "bicycles",
    "owls",
    "tea",
    "glaciers",
    "jazz",
    "bees",
    "maps",
    "clocks",
    "deserts",
    "lighthouses",
    "coral",
]
TASKS = ["Write two sentences about {t}.", "Give three facts about {t}."]


def prompts(count: int) -> list[str]:
    items = [task.format(t=t) for task in TASKS for t in TOPICS]
    return [items[i % len(items)] for i in range(count)]


def requests(texts: list[str], max_tokens: int) -> list[ChatRequest]:
    params = {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}
    return [
        ChatRequest("local/smollm2-135m", ({"role": "user", "content": t},), params) for t in texts
    ]


def batched(backend: LocalBackend, reqs: list[ChatRequest]) -> tuple[int, float]:
    async def all_at_once():
        return await asyncio.gather(*(backend.complete(r) for r in reqs))

    start = time.perf_counter()
    responses = asyncio.run(all_at_once())
    return sum(r.output_tokens for r in responses), time.perf_counter() - start


def sequential(backend: LocalBackend, texts: list[str], max_tokens: int) -> tuple[int, float]:
    model, tokenizer = backend.model, backend.tokenizer
    tokens, start = 0, time.perf_counter()
    for text in texts:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
            )
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = LocalBackend(
        "smollm2-135m", max_batch_size=args.batch_size, threads=args.threads, device="cpu"
    )
    load_start = time.perf_counter()
    backend.load()
    print(f"load (cached conversion): {time.perf_counter() - load_start:.1f} s")
    texts = prompts(args.prompts)
    reqs = requests(texts, args.max_tokens)
    batched(backend, reqs)  # warm-up: first calls at new shapes are slow on CPU
    sequential(backend, texts[:1], args.max_tokens)
    totals = {"batched": [0, 0.0], "sequential": [0, 0.0]}
    share = -(-len(texts) // args.rounds)
    for r in range(args.rounds):
        tokens, seconds = batched(backend, reqs)
        totals["batched"][0] += tokens
        totals["batched"][1] += seconds
        print(f"round {r}: batched {tokens} tokens in {seconds:.1f} s", flush=True)
        part = texts[r * share : (r + 1) * share]
        tokens, seconds = sequential(backend, part, args.max_tokens)
        totals["sequential"][0] += tokens
        totals["sequential"][1] += seconds
        print(f"round {r}: sequential {tokens} tokens in {seconds:.1f} s", flush=True)
    rate = {k: v[0] / v[1] for k, v in totals.items()}
    print(f"\nmachine: {platform.machine()}, torch threads {args.threads}, no GPU")
    print(
        f"prompts {args.prompts}, max_tokens {args.max_tokens} (every answer that long), "
        f"batch {args.batch_size}, rounds {args.rounds}"
    )
    print("| side | tokens | seconds | tokens/s |")
    print("|---|---|---|---|")
    for side, (tokens, seconds) in totals.items():
        print(f"| {side} | {tokens} | {seconds:.1f} | {rate[side]:.1f} |")
    print(f"\nspeedup: {rate['batched'] / rate['sequential']:.1f}x")
    backend.close()


if __name__ == "__main__":
    main()
