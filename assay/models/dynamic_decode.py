"""The generic decode loop: transformers' forward with a `DynamicCache`.

It runs any causal LM (and the supported ones with `ASSAY_LOCAL_FAST=0`); finished rows are
dropped from the batch and the cache at once.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

import torch

from assay.models.decode_rows import (
    DecodeRow,
    GenerationItem,
    advance,
    pick_tokens,
    stop_if_cancelled,
)
from assay.models.multi_lora import MultiLora
from assay.models.prefill_chunks import prefill_chunks


def prefill_dynamic(
    model: Any,
    rows: list[DecodeRow],
    items: list[GenerationItem],
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    shared: int,
    cache: Any,
    adapters: MultiLora | None,
) -> torch.Tensor:
    """Run the prompts (the shared prefix once per adapter); the last position's logits."""
    device = input_ids.device
    if shared:
        # the common prefix (system prompt, chat template) runs once per adapter in the
        # batch (LoRA changes its keys and values), then each row gets its adapter's copy
        firsts: dict[str | None, int] = {}
        for i, item in enumerate(items):
            firsts.setdefault(item.adapter, i)
        reps = list(firsts.values())
        prefix = torch.tensor([items[0].prompt_ids[:shared]] * len(reps), device=device)
        _forward(
            model,
            rows,
            reps,
            prefix,
            attention[: len(reps), :shared],
            positions.new_tensor([list(range(shared))] * len(reps)),
            cache,
            adapters,
        )
        group = [reps.index(firsts[item.adapter]) for item in items]
        cache.batch_select_indices(torch.tensor(group, device=device))
    active = list(range(len(items)))
    width = input_ids.shape[1]
    heads = getattr(model.config, "num_attention_heads", None) or 32
    for chunk in prefill_chunks(len(items), heads, width, shared + width):
        # each chunk attends to the cache so far: the mask covers the columns up to its end
        seen = attention[:, : shared + chunk.stop]
        logits = _forward(
            model, rows, active, input_ids[:, chunk], seen, positions[:, chunk], cache, adapters
        )
    return logits


def decode_dynamic(
    model: Any,
    rows: list[DecodeRow],
    logits: torch.Tensor,
    attention: torch.Tensor,
    cache: Any,
    tokenizer: Any,
    eos_token_ids: set[int],
    adapters: MultiLora | None,
    cancel: threading.Event | None = None,
) -> None:
    """The generic loop: transformers' forward, a DynamicCache, finished rows dropped at once."""
    device = logits.device
    active = list(range(len(rows)))
    while True:
        stop_if_cancelled(cancel)
        tokens = pick_tokens(logits, [rows[i] for i in active])
        still: list[int] = []
        for slot, row_index in enumerate(active):
            if not advance(rows[row_index], int(tokens[slot]), tokenizer, eos_token_ids):
                still.append(slot)
        if not still:
            return
        if len(still) < len(active):
            keep = torch.tensor(still, device=device)
            cache.batch_select_indices(keep)
            attention, tokens = attention[keep], tokens[keep]
            active = [active[slot] for slot in still]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=-1)
        positions = attention.sum(-1, keepdim=True) - 1
        logits = _forward(
            model, rows, active, tokens[:, None], attention, positions, cache, adapters
        )


def cache_argument(model: Any) -> str:
    """`cache` where the model's forward takes it (newer transformers deprecate
    `past_key_values` with a warning on every call), else `past_key_values`. Looked up once
    per model class: this runs on every decoding step."""
    name = _CACHE_ARGUMENT.get(type(model))
    if name is None:
        # a peft wrapper passes keyword arguments through to the model it wraps
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        takes_cache = "cache" in inspect.signature(inner.forward).parameters
        name = _CACHE_ARGUMENT[type(model)] = "cache" if takes_cache else "past_key_values"
    return name


_CACHE_ARGUMENT: dict[type, str] = {}


def _forward(
    model: Any,
    rows: list[DecodeRow],
    active: list[int],
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    adapters: MultiLora | None,
) -> torch.Tensor:
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "position_ids": positions,
        cache_argument(model): cache,
        "use_cache": True,
        "logits_to_keep": 1,
    }
    if adapters is None:
        out = model(**inputs)
    else:
        with adapters.routing([rows[i].item.adapter for i in active], input_ids.device):
            out = model(**inputs)
    return out.logits[:, -1, :].float()
