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

Two paths run prefill and decoding: the fast one (`fast_decode.DecodeStep` on a
`kv_cache.StaticKVCache`, for the Llama/Qwen2 models `fast_decode.supports`: packed weights,
the prompt prefilled by the same step, greedy rows picked by the screened fp32 argmax; fp32
by default, greedy outputs equal the generic loop's) or the generic one (transformers'
forward with a `DynamicCache`, for everything else or with `ASSAY_LOCAL_FAST=0`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from assay.models.constrained import GrammarState, mask_logits
from assay.models.decode_weights import native_bf16
from assay.models.fast_decode import PRECISIONS, DecodeStep, supports
from assay.models.kv_cache import GROW_COLUMNS, StaticKVCache
from assay.models.multi_lora import MultiLora

log = logging.getLogger(__name__)
_warned_bf16: set[str] = set()


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
    outputs equal the generic path's) or `"bf16"` (bfloat16 projections, fast path only;
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
    with torch.inference_mode():
        if fast:
            step = DecodeStep(model, precision)
            cache, hidden = _prefill_static(
                step, items, input_ids, attention, positions, shared, adapters, prefix_once
            )
            _decode_static(step, rows, hidden, cache, tokenizer, eos_token_ids, adapters)
        else:
            from transformers import DynamicCache

            dynamic = DynamicCache()
            logits = _prefill(
                model, rows, items, input_ids, attention, positions, shared, dynamic, adapters
            )
            _decode_dynamic(
                model, rows, logits, attention, dynamic, tokenizer, eos_token_ids, adapters
            )
    for row in rows:
        row.result.text = _final_text(row, tokenizer)
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


def _prefill_static(
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
        with _routing(adapters, [items[i].adapter for i in reps], device):
            step.hidden(
                prefix_ids, torch.arange(shared, device=device).expand(len(reps), -1), prefix
            )
        group = torch.tensor([reps.index(firsts[item.adapter]) for item in items], device=device)
        once = prefix_once and len(reps) == 1
        cache = StaticKVCache.after_prefix(prefix, group, width + room, once)
    else:
        cache = StaticKVCache.empty(len(items), *shape, width + room, device=device)
    with _routing(adapters, [item.adapter for item in items], device):
        hidden = step.hidden(input_ids, positions, cache, attention[:, shared:].bool())
    return cache, hidden


def _routing(adapters: MultiLora | None, names: list[str | None], device: Any) -> Any:
    return contextlib.nullcontext() if adapters is None else adapters.routing(names, device)


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
    hidden: torch.Tensor,
    cache: StaticKVCache,
    tokenizer: Any,
    eos_token_ids: set[int],
    adapters: MultiLora | None,
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
        live_rows = [rows[slot_rows[s]] for s in live]
        picked = hidden if len(live) == hidden.shape[0] else hidden[live]
        tokens = _pick_from_hidden(step, picked, live_rows)
        still = [
            (s, token)
            for s, token, row in zip(live, tokens.tolist(), live_rows, strict=True)
            if not _advance(row, token, tokenizer, eos_token_ids)
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
        with _routing(adapters, [rows[i].item.adapter for i in slot_rows], device):
            hidden = step.hidden(feed, next_positions, cache)
        next_positions = next_positions + 1


def _pick_from_hidden(step: DecodeStep, hidden: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """`_pick_tokens` from final hidden states: greedy rows through `DecodeStep.greedy` (the
    fp32 argmax without every logit), sampled rows through their full logits."""
    greedy = [i for i, row in enumerate(rows) if row.generator is None]
    if len(greedy) < len(rows):
        sampled = [i for i, row in enumerate(rows) if row.generator is not None]
        tokens = torch.empty(len(rows), dtype=torch.long, device=hidden.device)
        tokens[sampled] = _pick_tokens(step.logits(hidden[sampled]), [rows[i] for i in sampled])
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
