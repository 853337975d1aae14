"""The projection matmuls of one SmolLM2-135M decode step at batch 32, per CPU kernel.

One decode step multiplies a `(32, 576)` activation by every projection of the 30 layers
(q, k, v, o, gate, up, down) and by the lm_head (49152 x 576): 211 matmuls, 8.6 GFLOP, 540 MB
of fp32 weights. This times them with random weights of those shapes, per kernel:

- `mkl`: `F.linear` on fp32 weights (what `nn.Linear` runs: MKL's sgemm on x86 builds)
- `mkl-packed`: MKL's packed sgemm (`torch.ops.mkl._mkl_linear`, weights packed once)
- `onednn`: oneDNN's fp32 matmul on the plain weights (`torch.ops.mkldnn._linear_pointwise`)
- `onednn-packed`: the same on weights reordered once (`_reorder_linear_weight`): the fast
  path's fp32 kernel
- `bf16`: `F.linear` on bfloat16 weights and activations
- `bf16-packed`: oneDNN bf16 on reordered weights: the fast path's bf16 kernel

`step` streams all 211 weights in turn (they do not fit in the caches, as in a real step);
`hot` repeats each shape alone (its weight stays in L2/L3): the kernels' best case. GFLOP/s
against the step's 8.6 GFLOP.

    python bench/local_matmul.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

HIDDEN, INTERMEDIATE, KV, LAYERS, VOCAB = 576, 1536, 192, 30, 49152
LAYER_SHAPES = [(576, 576), (KV, 576), (KV, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]


def kernels(weight: torch.Tensor, rows: int) -> dict[str, tuple]:
    """name -> (function, prepared weight, activation dtype)."""
    linear = torch.ops.mkldnn._linear_pointwise
    out = {
        "mkl": (lambda x, w: F.linear(x, w), weight, torch.float32),
        "mkl-packed": (
            lambda x, w: torch.ops.mkl._mkl_linear(x, w[0], w[1], None, rows),
            (torch.ops.mkl._mkl_reorder_linear_weight(weight, rows), weight),
            torch.float32,
        ),
        "onednn": (lambda x, w: linear(x, w, None, "none", [], ""), weight, torch.float32),
        "onednn-packed": (
            lambda x, w: linear(x, w, None, "none", [], ""),
            torch.ops.mkldnn._reorder_linear_weight(weight, rows),
            torch.float32,
        ),
        "bf16": (lambda x, w: F.linear(x, w), weight.bfloat16(), torch.bfloat16),
        "bf16-packed": (
            lambda x, w: linear(x, w, None, "none", [], ""),
            torch.ops.mkldnn._reorder_linear_weight(weight.bfloat16(), rows),
            torch.bfloat16,
        ),
    }
    return out


def best_of(fn, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = args.rows
    shapes = LAYER_SHAPES * LAYERS + [(VOCAB, HIDDEN)]
    flop = sum(2 * rows * n * k for n, k in shapes)
    weights = [torch.randn(n, k) * 0.02 for n, k in shapes]
    inputs = {k: torch.randn(rows, k) for k in (HIDDEN, INTERMEDIATE)}
    print(f"load average at start: {os.getloadavg()[0]:.2f}; torch threads {args.threads}")
    print(f"step: {len(shapes)} matmuls, {flop / 1e9:.1f} GFLOP at batch {rows}")
    names = list(kernels(weights[0], rows))
    prepared = {name: [] for name in names}
    for weight in weights:
        for name, entry in kernels(weight, rows).items():
            prepared[name].append(entry)
    print("| kernel | step ms (all weights streamed) | GFLOP/s | lm_head ms (hot) |")
    print("|---|---|---|---|")
    with torch.inference_mode():
        for name in names:
            entries = prepared[name]
            xs = {k: v.to(entries[0][2]) for k, v in inputs.items()}

            def step(entries=entries, xs=xs):
                for (fn, w, _), (_, k) in zip(entries, shapes, strict=True):
                    fn(xs[k], w)

            seconds = best_of(step, args.repeats)
            fn, w, _ = entries[-1]
            head = best_of(lambda fn=fn, w=w, xs=xs: fn(xs[HIDDEN], w), args.repeats)
            print(
                f"| {name} | {seconds * 1e3:.1f} | {flop / seconds / 1e9:.0f} | {head * 1e3:.1f} |"
            )
    print("\nper shape, hot (GFLOP/s):")
    print("| shape | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    with torch.inference_mode():
        for n, k in sorted(set(LAYER_SHAPES)):
            weight = torch.randn(n, k) * 0.02
            cells = []
            for fn, w, dtype in kernels(weight, rows).values():
                x = inputs[k].to(dtype)

                def many(fn=fn, w=w, x=x):
                    for _ in range(20):
                        fn(x, w)

                cells.append(f"{2 * rows * n * k * 20 / best_of(many, args.repeats) / 1e9:.0f}")
            print(f"| {n}x{k} | " + " | ".join(cells) + " |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
