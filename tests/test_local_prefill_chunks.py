"""Prompts prefilled a chunk of columns at a time give the tokens of one whole prefill.

`prefill_chunks` sizes the chunks so attention's score matrices stay within a budget; here
the budget is shrunk so the tiny model's short prompts are cut into several chunks, and the
chunked batch must decode token for token like the unchunked one on both decode paths, with
left padding, a shared prefix and mixed LoRA adapters.
"""

from __future__ import annotations

import pytest
import torch
from local_tiny_model import build_lora_adapter, build_tiny_model

from assay.models import dynamic_decode, prefill_chunks, static_decode
from assay.models.batch_generate import (
    GenerationItem,
    _layout,
    _shared_prefix_len,
    generate_batch,
)
from assay.models.fast_decode import DecodeStep
from assay.models.multi_lora import MultiLora
from assay.models.registry import load_model

PROMPTS = [
    "Hi",
    "What is the weather in Paris today, and should I bring an umbrella?",
    "red green blue",
    "SELECT * FROM t WHERE x = 1; explain this query to me in plain words please",
    "The quick brown fox jumps over the lazy dog. 0123456789 and then some more words",
]
SYSTEM = "You are a terse assistant. Answer the weather question in plain words."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-chunks")
    model_dir = build_tiny_model(root / "model")
    model, tokenizer = load_model(str(model_dir), device="cpu")
    adapters = {"a": build_lora_adapter(model_dir, root / "lora-a", seed=1)}
    return model, tokenizer, adapters


def _items(tokenizer, system, adapters=(None,)):
    items = []
    for i, prompt in enumerate(PROMPTS):
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        items.append(GenerationItem(ids, 12, 0, adapter=adapters[i % len(adapters)]))
    return items


def _count_chunks(monkeypatch, module) -> list[int]:
    """Record how many chunks each prefill of `module` was cut into."""
    counts: list[int] = []

    def counted(*args, **kwargs):
        chunks = prefill_chunks.prefill_chunks(*args, **kwargs)
        counts.append(len(chunks))
        return chunks

    monkeypatch.setattr(module, "prefill_chunks", counted)
    return counts


def test_chunks_cover_the_columns_in_order_within_the_budget():
    chunks = prefill_chunks.prefill_chunks(8, 9, 3000, 3500, budget=9 * 8 * 3500 * 100)
    assert chunks[0].start == 0 and chunks[-1].stop == 3000
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    sizes = [c.stop - c.start for c in chunks]
    assert max(sizes) <= 100 and max(sizes) - min(sizes) <= 1  # near-equal, within budget
    assert len(chunks) == 30
    # a prompt within the budget is one call; the budget never narrows chunks below the
    # per-call minimum
    assert prefill_chunks.prefill_chunks(4, 9, 200, 200) == [slice(0, 200)]
    narrow = prefill_chunks.prefill_chunks(8, 9, 100, 100, budget=1)
    assert len(narrow) == -(-100 // prefill_chunks.MIN_CHUNK_COLUMNS)
    assert max(c.stop - c.start for c in narrow) <= prefill_chunks.MIN_CHUNK_COLUMNS
    assert prefill_chunks.prefill_chunks(8, 9, 0, 10) == []


def _first_logits(model, tokenizer, system, fast):
    """The logits after the prefill, on the fast path's static cache or the generic one."""
    items = _items(tokenizer, system)
    shared = _shared_prefix_len(items)
    input_ids, attention, positions = _layout(items, shared, tokenizer.pad_token_id)
    with torch.inference_mode():
        if fast:
            step = DecodeStep(model)
            _, hidden = static_decode.prefill_static(
                step, items, input_ids, attention, positions, shared, None, True
            )
            return step.logits(hidden)
        from transformers import DynamicCache

        return dynamic_decode.prefill_dynamic(
            model, [], items, input_ids, attention, positions, shared, DynamicCache(), None
        )


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-shared-prefix", "shared-prefix"])
def test_a_chunked_prefill_gives_the_logits_of_a_whole_one(tiny, monkeypatch, fast, system):
    model, tokenizer, _ = tiny
    whole = _first_logits(model, tokenizer, system, fast)
    counts = _count_chunks(monkeypatch, static_decode if fast else dynamic_decode)
    monkeypatch.setattr(prefill_chunks, "PREFILL_SCORE_FLOATS", 1)
    chunked = _first_logits(model, tokenizer, system, fast)
    assert len(counts) == 1 and counts[0] >= 2
    assert torch.allclose(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-shared-prefix", "shared-prefix"])
def test_a_chunked_prefill_decodes_the_tokens_of_a_whole_one(tiny, monkeypatch, fast, system):
    model, tokenizer, _ = tiny
    eos = {tokenizer.eos_token_id}
    whole = generate_batch(model, tokenizer, _items(tokenizer, system), eos, fast=fast)
    counts = _count_chunks(monkeypatch, static_decode if fast else dynamic_decode)
    monkeypatch.setattr(prefill_chunks, "PREFILL_SCORE_FLOATS", 1)  # every chunk the minimum
    chunked = generate_batch(model, tokenizer, _items(tokenizer, system), eos, fast=fast)
    assert counts and min(counts) >= 2  # the prompts were really cut
    assert [c.token_ids for c in chunked] == [w.token_ids for w in whole]
    assert [c.finish_reason for c in chunked] == [w.finish_reason for w in whole]
    lengths = {len(item.prompt_ids) for item in _items(tokenizer, system)}
    assert len(lengths) > 1  # rows of different lengths: the short ones are left-padded


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_chunks_keep_each_rows_adapter(tiny, monkeypatch, fast):
    model, tokenizer, adapter_dirs = tiny
    lora = MultiLora(model)
    try:
        lora.load("a", adapter_dirs["a"])
        names = ("a", None)
        whole = generate_batch(
            model, tokenizer, _items(tokenizer, SYSTEM, names), set(), lora, fast=fast
        )
        counts = _count_chunks(monkeypatch, static_decode if fast else dynamic_decode)
        monkeypatch.setattr(prefill_chunks, "PREFILL_SCORE_FLOATS", 1)
        chunked = generate_batch(
            model, tokenizer, _items(tokenizer, SYSTEM, names), set(), lora, fast=fast
        )
        assert counts and min(counts) >= 2
        assert [c.token_ids for c in chunked] == [w.token_ids for w in whole]
        plain = generate_batch(model, tokenizer, _items(tokenizer, SYSTEM), set(), fast=fast)
        assert any(p.token_ids != c.token_ids for p, c in zip(plain, chunked, strict=True))
    finally:
        for path, wrapped in lora._layers.items():
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path), child, wrapped.base)
