"""The fast decode loop: `fast_decode.DecodeStep` on a preallocated `kv_cache.StaticKVCache`.

For the Llama/Qwen2 models `fast_decode.supports`: packed weights, the prompt prefilled by
the same step, greedy rows picked by the screened fp32 argmax. A shared prompt prefix is
held once for all rows when the batch has one adapter (or none).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch

from assay.models.constrained import mask_logits
from assay.models.decode_rows import (
    DecodeRow,
    GenerationItem,
    advance,
    pick_tokens,
    stop_if_cancelled,
)
from assay.models.fast_decode import DecodeStep
from assay.models.kv_cache import GROW_COLUMNS, StaticKVCache
from assay.models.multi_lora import MultiLora
from assay.models.prefill_chunks import prefill_chunks

COMPACT_FRACTION = 0.125  # drop finished rows from the cache once they are this share of it


def prefill_static(
    step: DecodeStep,
    items: list[GenerationItem],
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    shared: int,
    adapters: MultiLora | None,
    prefix_once: bool,
) -> tuple[StaticKVCache, torch.Tensor]:
    """The fast path's prefill, straight into a static cache: the shared prefix once per
    adapter in the batch, then every row's own tokens. Returns the cache and each row's last
    hidden state.

    With one adapter (or none) the prefix is held once for all rows (unless `prefix_once`
    is off); with several, each row gets a copy of its adapter's prefix columns."""
    device = input_ids.device
    room = min(max(item.max_new_tokens for item in items), GROW_COLUMNS)
    width = input_ids.shape[1]
    shape = (len(step.layers), step.kv_heads, step.head_dim)
    if shared:
        firsts: dict[str | None, int] = {}
        for i, item in enumerate(items):
            firsts.setdefault(item.adapter, i)
        reps = list(firsts.values())
        prefix_ids = torch.tensor([items[0].prompt_ids[:shared]] * len(reps), device=device)
        prefix = StaticKVCache.empty(len(reps), *shape, shared, device=device)
        with routing(adapters, [items[i].adapter for i in reps], device):
            step.hidden(
                prefix_ids, torch.arange(shared, device=device).expand(len(reps), -1), prefix
            )
        group = torch.tensor([reps.index(firsts[item.adapter]) for item in items], device=device)
        once = prefix_once and len(reps) == 1
        cache = StaticKVCache.after_prefix(prefix, group, width + room, once)
    else:
        cache = StaticKVCache.empty(len(items), *shape, width + room, device=device)
    valid = attention[:, shared:].bool()
    chunks = prefill_chunks(len(items), step.heads, width, shared + width)
    with routing(adapters, [item.adapter for item in items], device):
        for chunk in chunks:  # only the last chunk's last hidden states are used
            hidden = step.hidden(input_ids[:, chunk], positions[:, chunk], cache, valid[:, chunk])
    return cache, hidden


def routing(adapters: MultiLora | None, names: list[str | None], device: Any) -> Any:
    """Route each row through its named adapter for the calls within (nothing without any)."""
    return contextlib.nullcontext() if adapters is None else adapters.routing(names, device)


def decode_static(
    step: DecodeStep,
    rows: list[DecodeRow],
    hidden: torch.Tensor,
    cache: StaticKVCache,
    tokenizer: Any,
    eos_token_ids: set[int],
    adapters: MultiLora | None,
    cancel: threading.Event | None = None,
) -> None:
    """The fast loop: `DecodeStep` on a static cache, from the prefill's last hidden states.

    Finished rows stay in the batch (their tokens ignored) until they are
    `COMPACT_FRACTION` of it, so the cache is not copied every time one row ends. Greedy rows
    take the fp32 argmax without all their logits (`DecodeStep.greedy`), sampled rows get
    their full logits.
    """
    device = hidden.device
    slot_rows = list(range(len(rows)))  # cache slot -> row index
    live = list(range(len(rows)))  # slots still generating
    next_positions = cache.positions()
    feed = torch.zeros(len(rows), dtype=torch.long, device=device)
    while True:
        stop_if_cancelled(cancel)
        live_rows = [rows[slot_rows[s]] for s in live]
        picked = hidden if len(live) == hidden.shape[0] else hidden[live]
        tokens = _pick_from_hidden(step, picked, live_rows)
        still = [
            (s, token)
            for s, token, row in zip(live, tokens.tolist(), live_rows, strict=True)
            if not advance(row, token, tokenizer, eos_token_ids)
        ]
        if not still:
            return
        live = [s for s, _ in still]
        if cache.rows - len(live) >= max(1, COMPACT_FRACTION * cache.rows):
            keep = torch.tensor(live, device=device)
            cache.compact(keep)
            next_positions, slot_rows = next_positions[keep], [slot_rows[s] for s in live]
            feed = feed[: len(live)]
            live = list(range(len(live)))
        feed[live] = torch.tensor([token for _, token in still], device=device)
        with routing(adapters, [rows[i].item.adapter for i in slot_rows], device):
            hidden = step.hidden(feed, next_positions, cache)
        next_positions = next_positions + 1


def _pick_from_hidden(
    step: DecodeStep, hidden: torch.Tensor, rows: list[DecodeRow]
) -> torch.Tensor:
    """`pick_tokens` from final hidden states: greedy rows through `DecodeStep.greedy` (the
    fp32 argmax without every logit), sampled rows through their full logits."""
    greedy = [i for i, row in enumerate(rows) if row.generator is None]
    if len(greedy) < len(rows):
        sampled = [i for i, row in enumerate(rows) if row.generator is not None]
        tokens = torch.empty(len(rows), dtype=torch.long, device=hidden.device)
        tokens[sampled] = pick_tokens(step.logits(hidden[sampled]), [rows[i] for i in sampled])
        if not greedy:
            return tokens
    states = [rows[i].item.grammar for i in greedy]
    mask = None
    if any(state is not None for state in states):

        def mask(logits: torch.Tensor) -> None:
            mask_logits(logits, states)

    if len(greedy) == len(rows):
        return step.greedy(hidden, mask)
    tokens[greedy] = step.greedy(hidden[greedy], mask)
    return tokens
