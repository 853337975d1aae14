"""Peak memory of prefilling long prompts: chunked (the default) against one whole prefill.

A batch of `--rows` prompts of about `--own` tokens each after a `--prefix`-token shared
prefix (BFCL's tool episodes: a 3-4k-token prompt, a task's episodes sharing its function
docs) goes through `generate_batch` on the embedded model cut to `--layers` layers (attention's
score matrices, the peak, are per layer and freed after it, so one layer of the real shape
shows the peak; the other layers add only their KV cache). Each case runs in its own process
and reports its peak resident memory above the loaded model, its wall time and its greedy
tokens, which must be the same chunked and whole.

    .venv/bin/python bench/prefill_memory.py --rows 8 --own 3000 --prefix 500
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

from assay.models import prefill_chunks
from assay.models.batch_generate import GenerationItem, generate_batch
from assay.models.registry import load_model, resolve_model

CASES = ["fast chunked", "fast whole", "generic chunked", "generic whole"]


def status_mb(field: str) -> float:
    """`VmRSS` (resident now) or `VmHWM` (its peak) of this process, in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    """Start VmHWM again from the resident memory now (the model's load peaked higher)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def run_case(case: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(resolve_model("smollm2-135m"), device="cpu")
    model.model.layers = model.model.layers[: args.layers]
    model.config.num_hidden_layers = args.layers
    if case.endswith("whole"):
        prefill_chunks.PREFILL_SCORE_FLOATS = 1 << 62  # every prompt in one call
    generator = torch.Generator().manual_seed(0)
    vocab = tokenizer.vocab_size
    prefix = torch.randint(100, vocab, (args.prefix,), generator=generator).tolist()
    items = []
    for i in range(args.rows):
        own = args.own - 37 * i  # rows of different lengths: the shorter ones are padded
        ids = torch.randint(100, vocab, (own,), generator=generator).tolist()
        items.append(GenerationItem(prefix + ids, args.max_tokens, 0.0, ignore_eos=True))
    before = status_mb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    results = generate_batch(
        model, tokenizer, items, {tokenizer.eos_token_id}, fast=case.startswith("fast")
    )
    seconds = time.perf_counter() - started
    peak = status_mb("VmHWM")
    return {
        "case": case,
        "peak_above_model_mb": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "tokens": [r.token_ids for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--own", type=int, default=3000)
    parser.add_argument("--prefix", type=int, default=500)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help="run one case in this process")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return
    passed = [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in ("case", "out")
    ]
    results = []
    for case in CASES:
        out = subprocess.run(
            [sys.executable, __file__, *passed, "--case", case],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        results.append(result)
        print(
            f"{case:16s} peak {result['peak_above_model_mb']:9.1f} MB  {result['seconds']:7.1f} s"
        )
    same = {
        path: results[CASES.index(f"{path} chunked")]["tokens"]
        == results[CASES.index(f"{path} whole")]["tokens"]
        for path in ("fast", "generic")
    }
    for path, equal in same.items():
        print(f"{path}: chunked and whole greedy tokens {'equal' if equal else 'DIFFER'}")
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "args": {k: v for k, v in vars(args).items() if k not in ("case", "out")},
        "results": [{k: v for k, v in r.items() if k != "tokens"} for r in results],
        "same_tokens": same,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
