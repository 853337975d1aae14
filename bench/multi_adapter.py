"""Multi-adapter serving: requests/s and mean latency vs concurrency, for 0/1/2/3/10 adapters.

A real `assay serve` app (uvicorn on 127.0.0.1, in this process) over the embedded
SmolLM2-135M with 10 random LoRA adapters (r=8 on q/k/v/o, applied per row by
`assay.models.multi_lora`). For each adapter count, closed-loop
clients (concurrency 1, 4, 16, 32) send chat completions whose `model` cycles through the
adapters, so a batch mixes adapters; "0 adapters" is the plain base model before any adapter
is attached (the single-model curve). Every request generates exactly `--max-tokens` tokens
(`ignore_eos`), so the curves compare equal work.

    nice python bench/multi_adapter.py --max-tokens 16 --threads 2
Writes bench/results/multi_adapter.json and bench/multi_adapter.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from assay.models.serve import build_backend, create_app

HERE = Path(__file__).parent
ADAPTER_COUNTS = [0, 1, 2, 3, 10]
CONCURRENCY = [1, 4, 16, 32]
QUESTION = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def make_adapters(model, directory: Path, count: int) -> dict[str, Path]:
    """Random LoRA adapters for `model` (a plain transformers model; left unchanged)."""
    import copy

    from peft import LoraConfig, get_peft_model

    adapters = {}
    for i in range(count):
        torch.manual_seed(100 + i)
        config = LoraConfig(
            r=8,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,  # random A and B: adapters that really differ
        )
        peft_model = get_peft_model(copy.deepcopy(model), config)
        path = directory / f"adapter-{i}"
        peft_model.save_pretrained(path)
        adapters[f"task-{i}"] = path
    return adapters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, models: list[str], concurrency: int, total: int, max_tokens: int):
    """Closed loop: `concurrency` workers send `total` requests; returns (req/s, mean s)."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = {
                "model": models[i % len(models)],
                "messages": QUESTION,
                "temperature": 0,
                "max_tokens": max_tokens,
                "ignore_eos": True,
            }
            start = time.perf_counter()
            r = await client.post(url, json=body, timeout=600)
            r.raise_for_status()
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient() as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return total / wall, sum(latencies) / len(latencies)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for count in ADAPTER_COUNTS:
        rows = [r for r in results if r["adapters"] == count]
        label = "base model only" if count == 0 else f"{count} adapter{'s' if count > 1 else ''}"
        style = {"linewidth": 3, "color": "black"} if count == 0 else {}
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["requests_per_s"] for r in rows], marker="o", label=label, **style)
        right.plot(xs, [r["mean_latency_s"] for r in rows], marker="o", label=label, **style)
    for ax, title in ((left, "throughput (requests/s)"), (right, "mean latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.legend()
    fig.suptitle("assay serve: SmolLM2-135M + LoRA adapters, mixed-adapter batches (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="assay-multi-adapter-"))
    backend = build_backend("smollm2-135m", threads=args.threads, device="cpu")
    adapters = make_adapters(backend.model, workdir, max(ADAPTER_COUNTS))
    backend.adapter_dirs.update(adapters)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    results = []
    for count in ADAPTER_COUNTS:
        models = ["smollm2-135m"] if count == 0 else [f"task-{i}" for i in range(count)]
        # warm-up: attach the adapters (not timed)
        asyncio.run(load(url, models, len(models), len(models), 2))
        for concurrency in CONCURRENCY:
            total = max(4, 2 * concurrency)
            rps, latency = asyncio.run(load(url, models, concurrency, total, args.max_tokens))
            row = {
                "adapters": count,
                "concurrency": concurrency,
                "requests": total,
                "requests_per_s": round(rps, 3),
                "mean_latency_s": round(latency, 3),
                "tokens_per_s": round(rps * args.max_tokens, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    server.should_exit = True
    backend.close()
    shutil.rmtree(workdir, ignore_errors=True)

    out = HERE / "results" / "multi_adapter.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"max_tokens": args.max_tokens, "results": results}, indent=2))
    plot(results, HERE / "multi_adapter.png")
    print("\n| adapters | concurrency | requests/s | mean latency (s) | tokens/s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['adapters']} | {r['concurrency']} | {r['requests_per_s']:.2f} | "
            f"{r['mean_latency_s']:.2f} | {r['tokens_per_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
