"""One padded batch of generations in one decode loop: the compute core of the local backend.

Each row brings its own prompt, sampling parameters, seed, stop strings, token budget,
LoRA adapter and (optionally) grammar. Prompts are left-padded into one tensor, the prompt is
run once (prefill, keeping only the last position's logits), then every step feeds one token
per row through the KV cache. A prefix that every prompt shares (the system prompt, a
few-shot teacher prompt's examples) is run once per LoRA adapter in the batch; the fast loop
then holds it once (one adapter) and reads it once per step for all rows, so neither the
prefill nor the decode pays for it per row. The padding sits between the shared prefix and
each row's own tokens, masked out. Rows that finish are dropped from the batch (and from the KV
cache), so long tails do not pay for finished rows. Rows naming different LoRA adapters share
each forward pass (`multi_lora.MultiLora` routes each row through its adapter).

Two paths run prefill and decoding: the fast one (`static_decode.py`:
`fast_decode.DecodeStep` on a `kv_cache.StaticKVCache`, for the Llama/Qwen2 models
`fast_decode.supports`: packed weights, the prompt prefilled by the same step, greedy rows
picked by the screened fp32 argmax; fp32 by default, greedy outputs equal the generic
loop's) or the generic one (`dynamic_decode.py`: transformers' forward with a
`DynamicCache`, for everything else or with `ASSAY_LOCAL_FAST=0`). This module lays the
batch out and picks the path; `decode_rows.py` holds the per-row state both loops share.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import torch

from assay.models.decode_rows import (
    DecodeRow,
    GenerationCancelled,
    GenerationItem,
    GenerationResult,
    final_text,
)
from assay.models.decode_weights import native_bf16
from assay.models.dynamic_decode import cache_argument, decode_dynamic, prefill_dynamic
from assay.models.fast_decode import PRECISIONS, DecodeStep, supports
from assay.models.multi_lora import MultiLora
from assay.models.static_decode import decode_static, prefill_static

log = logging.getLogger(__name__)
_warned_bf16: set[str] = set()

# cache_argument lives with the generic loop; importers (assay.train.eval) take it from here
__all__ = [
    "GenerationCancelled",
    "GenerationItem",
    "GenerationResult",
    "cache_argument",
    "generate_batch",
]


def generate_batch(
    model: Any,
    tokenizer: Any,
    items: list[GenerationItem],
    eos_token_ids: set[int],
    adapters: MultiLora | None = None,
    *,
    fast: bool | None = None,
    precision: str | None = None,
    prefix_once: bool = True,
    cancel: threading.Event | None = None,
) -> list[GenerationResult]:
    """Generate every item in one padded batch; results in the order of `items`.

    `fast`: decode with `fast_decode.DecodeStep` and a static KV cache (default: on for
    the models it supports, unless `ASSAY_LOCAL_FAST=0`); `False` keeps the generic
    transformers forward with a `DynamicCache`. `precision`: `"fp32"` (default; greedy
    outputs equal the generic path's) or `"bf16"` (bfloat16 projections, fast path only;
    default from `ASSAY_LOCAL_PRECISION`). `prefix_once`: in the fast loop, hold a shared
    prefix once for all rows (default) rather than a copy per row (the benchmark's peer).
    `cancel`: once set, the batch stops before its next decoding step and raises
    `GenerationCancelled`.
    """
    if not items:
        return []
    device = next(model.parameters()).device
    rows = [DecodeRow(item, device) for item in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shared = _shared_prefix_len(items)
    input_ids, attention, positions = _layout(items, shared, pad_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = positions.to(device)
    precision = precision or os.environ.get("ASSAY_LOCAL_PRECISION", "fp32")
    fast = _use_fast_path(model, fast, precision)
    with torch.inference_mode():
        if fast:
            step = DecodeStep(model, precision)
            cache, hidden = prefill_static(
                step, items, input_ids, attention, positions, shared, adapters, prefix_once
            )
            decode_static(step, rows, hidden, cache, tokenizer, eos_token_ids, adapters, cancel)
        else:
            from transformers import DynamicCache

            dynamic = DynamicCache()
            logits = prefill_dynamic(
                model, rows, items, input_ids, attention, positions, shared, dynamic, adapters
            )
            decode_dynamic(
                model, rows, logits, attention, dynamic, tokenizer, eos_token_ids, adapters, cancel
            )
    for row in rows:
        row.result.text = final_text(row, tokenizer)
    return [row.result for row in rows]


def _use_fast_path(model: Any, fast: bool | None, precision: str) -> bool:
    if fast is None:
        fast = os.environ.get("ASSAY_LOCAL_FAST", "1") != "0"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    use = bool(fast) and supports(model, precision)
    device = next(model.parameters()).device
    if use and precision == "bf16" and not native_bf16(device) and str(device) not in _warned_bf16:
        _warned_bf16.add(str(device))
        log.warning(
            "precision bf16 on a device without native bfloat16 (a CPU without AVX512-BF16 or "
            "AMX): torch emulates it, about a third of fp32's speed on an AVX2 CPU; use fp32"
        )
    return use


def _layout(
    items: list[GenerationItem], shared: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's own tokens (after the `shared` prefix), left-padded: `(rows, width)` ids,
    the `(rows, shared + width)` attention mask, the own tokens' `(rows, width)` positions."""
    width = max(len(item.prompt_ids) for item in items) - shared
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), shared + width), dtype=torch.long)
    attention[:, :shared] = 1
    for i, item in enumerate(items):
        own = item.prompt_ids[shared:]
        input_ids[i, width - len(own) :] = torch.tensor(own)
        attention[i, shared + width - len(own) :] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, shared:]
    return input_ids, attention, positions


MIN_SHARED_PREFIX = 8  # tokens; below this one more forward pass costs more than it saves


def _shared_prefix_len(items: list[GenerationItem]) -> int:
    """Tokens every prompt starts with (0 if fewer than MIN_SHARED_PREFIX).

    At least one token of each prompt stays out of the prefix, so every row has a last
    position to read its first logits from.
    """
    if len(items) < 2:
        return 0
    first = items[0].prompt_ids
    limit = min(len(item.prompt_ids) for item in items) - 1
    length = 0
    while length < limit and all(item.prompt_ids[length] == first[length] for item in items):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0
