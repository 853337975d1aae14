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

The prefill always uses the model's own forward. Decoding then takes one of two loops: the
fast one (`fast_decode.DecodeStep` on a `kv_cache.StaticKVCache`, for the Llama/Qwen2 models
`fast_decode.supports`; fp32 by default, greedy outputs equal the generic loop's) or the
generic one (transformers' forward with a `DynamicCache`, for everything else or with
`ASSAY_LOCAL_FAST=0`).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from assay.models.constrained import GrammarState, mask_logits
from assay.models.fast_decode import PRECISIONS, DecodeStep, supports
from assay.models.kv_cache import GROW_COLUMNS, StaticKVCache
from assay.models.multi_lora import MultiLora


@dataclass
class GenerationItem:
    """One row to generate. `temperature <= 0` means greedy."""

    prompt_ids: list[int]
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str | None = None
    grammar: GrammarState | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens


@dataclass
class GenerationResult:
    """What one row produced: tokens (without the stop token), text, and why it ended."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"


class _Row:
    """Decode-time state of one row."""

    def __init__(self, item: GenerationItem, device: torch.device) -> None:
        self.item = item
        self.result = GenerationResult()
        self.generator: torch.Generator | None = None
        if item.temperature > 0:
            self.generator = torch.Generator(device=device)
            if item.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(int(item.seed) % (2**63))


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
) -> list[GenerationResult]:
    """Generate every item in one padded batch; results in the order of `items`.

    `fast`: decode with `fast_decode.DecodeStep` and a static KV cache (default: on for
    the models it supports, unless `ASSAY_LOCAL_FAST=0`); `False` keeps the generic
    transformers forward with a `DynamicCache`. `precision`: `"fp32"` (default; greedy
    outputs equal the generic path's) or `"bf16"` (bfloat16 matmuls, fast path only;
    default from `ASSAY_LOCAL_PRECISION`). `prefix_once`: in the fast loop, hold a shared
    prefix once for all rows (default) rather than a copy per row (the benchmark's peer).
    """
    if not items:
        return []
    device = next(model.parameters()).device
    rows = [_Row(item, device) for item in items]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shared = _shared_prefix_len(items)
    input_ids, attention, positions = _layout(items, shared, pad_id)
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = positions.to(device)
    precision = precision or os.environ.get("ASSAY_LOCAL_PRECISION", "fp32")
    fast = _use_fast_path(model, fast, precision)
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        logits = _prefill(
            model, rows, items, input_ids, attention, positions, shared, cache, adapters
        )
        if fast:
            room = max(item.max_new_tokens for item in items)
            # a prefix run with one set of weights is held once; with several adapters in the
            # batch each row keeps its adapter's copy
            one_adapter = len({item.adapter for item in items}) == 1
            once = shared if prefix_once and one_adapter else 0
            static = StaticKVCache.from_dynamic(
                cache, attention, room=min(room, GROW_COLUMNS), shared=once
            )
            del cache
            _decode_static(
                DecodeStep(model, precision),
                rows,
                logits,
                static,
                tokenizer,
                eos_token_ids,
                adapters,
            )
        else:
            _decode_dynamic(
                model, rows, logits, attention, cache, tokenizer, eos_token_ids, adapters
            )
    for row in rows:
        row.result.text = _final_text(row, tokenizer)
    return [row.result for row in rows]


def _use_fast_path(model: Any, fast: bool | None, precision: str) -> bool:
    if fast is None:
        fast = os.environ.get("ASSAY_LOCAL_FAST", "1") != "0"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return bool(fast) and supports(model, precision)


def _prefill(
    model: Any,
    rows: list[_Row],
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
    return _forward(model, rows, active, input_ids, attention, positions, cache, adapters)


def _decode_dynamic(
    model: Any,
    rows: list[_Row],
    logits: torch.Tensor,
    attention: torch.Tensor,
    cache: Any,
    tokenizer: Any,
    eos_token_ids: set[int],
    adapters: MultiLora | None,
) -> None:
    """The generic loop: transformers' forward, a DynamicCache, finished rows dropped at once."""
    device = logits.device
    active = list(range(len(rows)))
    while True:
        tokens = _pick_tokens(logits, [rows[i] for i in active])
        still: list[int] = []
        for slot, row_index in enumerate(active):
            if not _advance(rows[row_index], int(tokens[slot]), tokenizer, eos_token_ids):
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


COMPACT_FRACTION = 0.125  # drop finished rows from the cache once they are this share of it


def _decode_static(
    step: DecodeStep,
    rows: list[_Row],
    logits: torch.Tensor,
    cache: StaticKVCache,
    tokenizer: Any,
    eos_token_ids: set[int],
    adapters: MultiLora | None,
) -> None:
    """The fast loop: `DecodeStep` on a static cache.

    Finished rows stay in the batch (their tokens ignored) until they are
    `COMPACT_FRACTION` of it, so the cache is not copied every time one row ends.
    """
    device = logits.device
    slot_rows = list(range(len(rows)))  # cache slot -> row index
    live = list(range(len(rows)))  # slots still generating
    next_positions = cache.positions()
    feed = torch.zeros(len(rows), dtype=torch.long, device=device)
    while True:
        picked = logits if len(live) == logits.shape[0] else logits[live]
        tokens = _pick_tokens(picked, [rows[slot_rows[s]] for s in live])
        still = [
            (s, token)
            for s, token in zip(live, tokens.tolist(), strict=True)
            if not _advance(rows[slot_rows[s]], token, tokenizer, eos_token_ids)
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
        if adapters is None:
            logits = step(feed, next_positions, cache)
        else:
            with adapters.routing([rows[i].item.adapter for i in slot_rows], device):
                logits = step(feed, next_positions, cache)
        next_positions = next_positions + 1


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
    rows: list[_Row],
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


def _pick_tokens(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """One next token per row: grammar mask, then greedy or temperature / top-k / top-p."""
    mask_logits(logits, [row.item.grammar for row in rows])
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.generator is not None]
    if not sampled:
        return tokens
    sub = logits[sampled]
    temps = torch.tensor([rows[i].item.temperature for i in sampled], device=logits.device)
    sub = sub / temps[:, None]
    top_ks = [rows[i].item.top_k for i in sampled]
    if any(k > 0 for k in top_ks):
        for j, k in enumerate(top_ks):
            if 0 < k < sub.shape[-1]:
                kth = torch.topk(sub[j], k).values[-1]
                sub[j] = sub[j].masked_fill(sub[j] < kth, float("-inf"))
    top_ps = torch.tensor([rows[i].item.top_p for i in sampled], device=logits.device)
    if bool((top_ps < 1.0).any()):
        sorted_logits, order = sub.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_ps[:, None]
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        sub = sub.masked_fill(drop, float("-inf"))
    probs = sub.softmax(dim=-1)
    for j, i in enumerate(sampled):
        tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    return tokens


def _advance(row: _Row, token: int, tokenizer: Any, eos_token_ids: set[int]) -> bool:
    """Append one token to the row; True when the row has finished."""
    item, result = row.item, row.result
    if item.grammar is not None:
        if not item.grammar.accept(token):
            result.finish_reason = "stop"
            return True
        if item.grammar.finished:
            result.finish_reason = "stop"
            return True
    if token in eos_token_ids and item.grammar is None and not item.ignore_eos:
        result.finish_reason = "stop"
        return True
    result.token_ids.append(token)
    if item.stop:
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        if any(stop in text for stop in item.stop):
            result.finish_reason = "stop"
            return True
    if len(result.token_ids) >= item.max_new_tokens:
        # a grammar row whose last token completed its value is whole, not cut
        complete = item.grammar is not None and item.grammar.complete
        result.finish_reason = "stop" if complete else "length"
        return True
    return False


def _final_text(row: _Row, tokenizer: Any) -> str:
    text = tokenizer.decode(row.result.token_ids, skip_special_tokens=True)
    cuts = [text.index(stop) for stop in row.item.stop if stop in text]
    return text[: min(cuts)] if cuts else text
