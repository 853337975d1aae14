"""Local generation tokens/s: generic vs fast decode path vs `model.generate`, same run.

Same model (the embedded SmolLM2-135M), same prompts, greedy, every answer exactly
`--max-tokens` tokens long (`ignore_eos` / `min_new_tokens`). The batched sides go through the
real backend path (N concurrent `LocalBackend.complete` calls that its scheduler turns into
padded batches), switched per round with the environment variables `generate_batch` reads:

- `generic`: `ASSAY_LOCAL_FAST=0`, transformers' forward with a `DynamicCache` (the old path)
- `fast-fp32`: the static-KV-cache decode step in fp32 (the default)
- `fast-bf16`: the same with bfloat16 matmuls (`ASSAY_LOCAL_PRECISION=bf16`)
- `model.generate`: one prompt at a time, on the round's share of the prompts

On a shared machine the load drifts, so the sides are interleaved within every round and the
table reports the median over rounds (and the ratio to `generic` per round, median).
Afterwards it checks quality: fp32 fast vs generic greedy outputs token for token, and bf16
vs fp32 (whole answers equal, and teacher-forced agreement: given fp32's answer so far, how
often bf16 picks fp32's next token).

    nice python bench/local_generation.py --prompts 32 --max-tokens 48 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
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
SIDES = {
    "generic": {"ASSAY_LOCAL_FAST": "0", "ASSAY_LOCAL_PRECISION": "fp32"},
    "fast-fp32": {"ASSAY_LOCAL_FAST": "1", "ASSAY_LOCAL_PRECISION": "fp32"},
    "fast-bf16": {"ASSAY_LOCAL_FAST": "1", "ASSAY_LOCAL_PRECISION": "bf16"},
}


def prompts(count: int) -> list[str]:
    items = [task.format(t=t) for task in TASKS for t in TOPICS]
    return [items[i % len(items)] for i in range(count)]


def requests(texts: list[str], max_tokens: int) -> list[ChatRequest]:
    params = {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}
    return [
        ChatRequest("local/smollm2-135m", ({"role": "user", "content": t},), params) for t in texts
    ]


def batched(backend: LocalBackend, reqs: list[ChatRequest], side: str) -> tuple[int, float, list]:
    os.environ.update(SIDES[side])

    async def all_at_once():
        return await asyncio.gather(*(backend.complete(r) for r in reqs))

    start = time.perf_counter()
    responses = asyncio.run(all_at_once())
    seconds = time.perf_counter() - start
    return sum(r.output_tokens for r in responses), seconds, [r.text for r in responses]


def sequential(backend: LocalBackend, texts: list[str], max_tokens: int) -> tuple[int, float]:
    model, tokenizer = backend.model, backend.tokenizer
    tokens, start = 0, time.perf_counter()
    for text in texts:
        ids = encode(tokenizer, text)
        with torch.inference_mode():
            out = model.generate(
                **ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
            )
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens, time.perf_counter() - start


def encode(tokenizer, text: str):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False)


def quality(backend: LocalBackend, texts: list[str], max_tokens: int) -> dict[str, float]:
    """Greedy token agreement: fast fp32 vs generic, bf16 vs fp32 (whole and teacher-forced)."""
    from assay.models.batch_generate import GenerationItem, generate_batch

    model, tokenizer = backend.model, backend.tokenizer
    eos = {tokenizer.eos_token_id}

    def items():
        return [
            GenerationItem(encode(tokenizer, t)["input_ids"][0].tolist(), max_tokens, 0)
            for t in texts
        ]

    generic = generate_batch(model, tokenizer, items(), eos, fast=False)
    fp32 = generate_batch(model, tokenizer, items(), eos, fast=True, precision="fp32")
    bf16 = generate_batch(model, tokenizer, items(), eos, fast=True, precision="bf16")
    forced, steps = teacher_forced_agreement(model, items(), [r.token_ids for r in fp32])
    prefix = [_common_prefix(a.token_ids, b.token_ids) for a, b in zip(fp32, bf16, strict=True)]
    return {
        "rows": len(texts),
        "fp32_equal_generic": sum(
            a.token_ids == b.token_ids for a, b in zip(fp32, generic, strict=True)
        ),
        "bf16_equal_fp32": sum(a.token_ids == b.token_ids for a, b in zip(fp32, bf16, strict=True)),
        "bf16_first_divergence_median": statistics.median(prefix),
        "bf16_teacher_forced_agreement": forced / max(1, steps),
        "teacher_forced_steps": steps,
    }


def teacher_forced_agreement(model, items, answers: list[list[int]]) -> tuple[int, int]:
    """Steps where bf16's greedy pick equals fp32's token, feeding fp32's answers."""
    from assay.models.batch_generate import _layout
    from assay.models.fast_decode import DecodeStep
    from assay.models.static_decode import prefill_static

    agree = total = 0
    step = DecodeStep(model, "bf16")
    with torch.inference_mode():
        for item, answer in zip(items, answers, strict=True):
            # bf16 next-token picks along fp32's answer, one row at a time (no padding)
            ids, attention, positions = _layout([item], 0, 0)
            cache, hidden = prefill_static(step, [item], ids, attention, positions, 0, None, True)
            for position, token in enumerate(answer):
                agree += int(step.greedy(hidden).item() == token)
                total += 1
                hidden = step.hidden(
                    torch.tensor([token]), torch.tensor([len(item.prompt_ids) + position]), cache
                )
    return agree, total


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-generate", action="store_true", help="skip model.generate")
    parser.add_argument("--sides", default=",".join(SIDES), help="batched sides to run")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality checks")
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
    sides = args.sides.split(",")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for side in sides:  # warm-up: first calls at new shapes are slow on CPU; packed weights
        batched(backend, reqs[:4], side)
    sequential(backend, texts[:1], 8)
    rates: dict[str, list[float]] = {side: [] for side in [*sides, "model.generate"]}
    outputs: dict[str, list[str]] = {}
    share = -(-len(texts) // args.rounds)
    for r in range(args.rounds):
        for side in sides:
            tokens, seconds, outputs[side] = batched(backend, reqs, side)
            rates[side].append(tokens / seconds)
            print(
                f"round {r}: {side} {tokens} tokens in {seconds:.1f} s "
                f"(load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        if not args.no_generate:
            part = texts[r * share : (r + 1) * share] or texts[:share]
            tokens, seconds = sequential(backend, part, args.max_tokens)
            rates["model.generate"].append(tokens / seconds)
            print(
                f"round {r}: model.generate {tokens} tokens in {seconds:.1f} s "
                f"(load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch threads {args.threads}, torch {torch.__version__}"
    )
    print(
        f"prompts {args.prompts}, max_tokens {args.max_tokens} (every answer that long), "
        f"batch {args.batch_size}, rounds {args.rounds}, load avg {os.getloadavg()[0]:.1f}"
    )
    print("| side | tokens/s (median) | per round | x generic (median) | x model.generate |")
    print("|---|---|---|---|---|")
    base = rates.get("generic") or rates[sides[0]]
    for side, values in rates.items():
        if not values:
            continue
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=False))
        vs_gen = ""
        if rates["model.generate"]:
            gen = rates["model.generate"]
            vs_gen = f"{statistics.median(v / g for v, g in zip(values, gen, strict=False)):.1f}"
        per_round = ", ".join(f"{v:.1f}" for v in values)
        print(
            f"| {side} | {statistics.median(values):.1f} | {per_round} | {ratio:.2f} | {vs_gen} |"
        )
    for side in sides:
        if side != "generic" and "generic" in outputs:
            same = sum(a == b for a, b in zip(outputs["generic"], outputs[side], strict=True))
            print(f"benchmark answers: {side} == generic on {same}/{len(texts)} rows")
    if not args.no_quality:
        print("quality (greedy, natural stops):", quality(backend, texts, args.max_tokens))
    backend.close()


if __name__ == "__main__":
    main()
