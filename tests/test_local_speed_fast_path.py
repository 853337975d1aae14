"""The fast decode path (static KV cache, lean decode step) against the generic transformers path.

Same batch through `generate_batch(fast=True)` and `generate_batch(fast=False)` on a tiny
random Llama: greedy and seeded sampling must agree token for token in fp32, with shared
prefixes, rows finishing at different steps (cache compaction), answers longer than the
cache's first allocation (growth), stop strings, JSON grammars and mixed LoRA adapters.
bf16 matmuls are checked for closeness to fp32 logits, not equality.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from local_tiny_model import build_lora_adapter, build_tiny_model, tiny_llama_config

from assay.models.batch_generate import (
    GenerationItem,
    _layout,
    _shared_prefix_len,
    generate_batch,
)
from assay.models.fast_decode import DecodeStep, supports
from assay.models.kv_cache import GROW_COLUMNS, StaticKVCache
from assay.models.multi_lora import MultiLora
from assay.models.registry import load_model
from assay.models.static_decode import prefill_static, routing

PROMPTS = [
    "Hi",
    "What is the weather in Paris today, and should I bring an umbrella?",
    "red green blue",
    "SELECT * FROM t WHERE x = 1; explain this query to me in plain words please",
    "The quick brown fox",
    "yes no null",
]
SYSTEM = "You are a terse assistant. Answer the weather question in plain words."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-fast")
    model_dir = build_tiny_model(root / "model")
    model, tokenizer = load_model(str(model_dir), device="cpu")
    adapters = {
        "a": build_lora_adapter(model_dir, root / "lora-a", seed=1),
        "b": build_lora_adapter(model_dir, root / "lora-b", seed=2),
    }
    return model, tokenizer, adapters


def ids_of(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def both_paths(model, tokenizer, make_items, adapters=None, precision="fp32"):
    eos = {tokenizer.eos_token_id}
    generic = generate_batch(model, tokenizer, make_items(), eos, adapters, fast=False)
    fast = generate_batch(
        model, tokenizer, make_items(), eos, adapters, fast=True, precision=precision
    )
    return generic, fast


def test_the_tiny_llama_takes_the_fast_path(tiny):
    model, _, _ = tiny
    assert supports(model)
    from transformers import GPT2Config, GPT2LMHeadModel

    other = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert not supports(other)  # other architectures keep the generic path


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-shared-prefix", "shared-prefix"])
def test_fast_greedy_equals_generic_greedy_token_for_token(tiny, system):
    model, tokenizer, _ = tiny
    budgets = [3, 40, 7, GROW_COLUMNS + 30, 1, 19]  # rows end at different steps

    def items():
        return [
            # the long row ignores eos so the answer outgrows the cache's first allocation
            GenerationItem(ids_of(tokenizer, p, system), n, 0, ignore_eos=n > GROW_COLUMNS)
            for p, n in zip(PROMPTS, budgets, strict=True)
        ]

    generic, fast = both_paths(model, tokenizer, items)
    for g, f in zip(generic, fast, strict=True):
        assert f.token_ids == g.token_ids
        assert f.finish_reason == g.finish_reason
        assert f.text == g.text
    assert max(len(g.token_ids) for g in generic) > GROW_COLUMNS  # the cache had to grow


def test_rows_that_end_on_eos_match_and_keep_their_reason(tiny):
    model, tokenizer, _ = tiny
    # the tiny model's greedy answers stop on its eos at different steps for some prompts

    def items():
        return [
            GenerationItem(ids_of(tokenizer, p), max_new_tokens=60, temperature=0) for p in PROMPTS
        ]

    generic, fast = both_paths(model, tokenizer, items)
    for g, f in zip(generic, fast, strict=True):
        assert (f.token_ids, f.finish_reason) == (g.token_ids, g.finish_reason)
    assert "stop" in {g.finish_reason for g in generic}, "no row ended on eos: test is moot"
    ignoring = generate_batch(
        model,
        tokenizer,
        [GenerationItem(ids_of(tokenizer, p), 60, 0, ignore_eos=True) for p in PROMPTS],
        {tokenizer.eos_token_id},
    )
    assert all(len(r.token_ids) == 60 for r in ignoring)


def test_seeded_per_row_sampling_matches_the_generic_path(tiny):
    model, tokenizer, _ = tiny
    settings = [(0.7, 1.0, 0, 11), (1.3, 0.9, 0, 12), (1.0, 1.0, 5, 13), (0.0, 1.0, 0, None)]

    def items():
        return [
            GenerationItem(ids_of(tokenizer, p), 24, temperature=t, top_p=tp, top_k=k, seed=s)
            for p, (t, tp, k, s) in zip(PROMPTS, settings, strict=False)
        ]

    generic, fast = both_paths(model, tokenizer, items)
    assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
    reseeded = generate_batch(
        model,
        tokenizer,
        [GenerationItem(ids_of(tokenizer, PROMPTS[0]), 24, temperature=0.7, seed=99)],
        {tokenizer.eos_token_id},
    )
    assert reseeded[0].token_ids != fast[0].token_ids  # the seed matters


def test_stop_strings_cut_the_same_text(tiny):
    model, tokenizer, _ = tiny
    reference = generate_batch(
        model, tokenizer, [GenerationItem(ids_of(tokenizer, PROMPTS[1]), 20, 0)], set()
    )[0]
    stop = reference.text[5:8]
    assert stop

    def items():
        return [GenerationItem(ids_of(tokenizer, p), 20, 0, stop=(stop,)) for p in PROMPTS[:3]]

    generic, fast = both_paths(model, tokenizer, items)
    assert [(f.text, f.finish_reason) for f in fast] == [(g.text, g.finish_reason) for g in generic]
    assert fast[1].finish_reason == "stop" and stop not in fast[1].text


def test_json_grammar_rows_match_and_stay_valid(tiny):
    pytest.importorskip("xgrammar")
    from assay.models.constrained import GrammarCompiler

    model, tokenizer, _ = tiny
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
        "required": ["city", "ok"],
        "additionalProperties": False,
    }
    compiler = GrammarCompiler(tokenizer, model.get_output_embeddings().weight.shape[0], [2])
    compiled = compiler.compile(schema)

    def items():
        rows = [GenerationItem(ids_of(tokenizer, p), 40, 0) for p in PROMPTS[:4]]
        for row in rows[:3]:
            row.grammar = compiler.matcher(compiled)
        return rows

    generic, fast = both_paths(model, tokenizer, items)
    assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
    for result in fast[:3]:
        if result.finish_reason == "stop":
            jsonschema.validate(json.loads(result.text), schema)


def test_mixed_adapter_batch_matches_the_generic_path(tiny):
    model, tokenizer, adapter_dirs = tiny
    lora = MultiLora(model)
    try:
        for name, directory in adapter_dirs.items():
            lora.load(name, directory)
        names = ["a", None, "b", "a", None, "b"]

        def items():
            return [
                GenerationItem(ids_of(tokenizer, p, SYSTEM), 16, 0, adapter=a)
                for p, a in zip(PROMPTS, names, strict=True)
            ]

        generic, fast = both_paths(model, tokenizer, items, adapters=lora)
        assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
        base_only = [GenerationItem(i.prompt_ids, 16, 0) for i in items()]
        plain = generate_batch(model, tokenizer, base_only, set(), lora, fast=True)
        assert [plain[i].token_ids for i in (1, 4)] == [fast[i].token_ids for i in (1, 4)]
        assert any(plain[i].token_ids != fast[i].token_ids for i in (0, 2, 3, 5))
    finally:
        _unwrap(model, lora)


def _unwrap(model, lora: MultiLora) -> None:
    for path, wrapped in lora._layers.items():
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path), child, wrapped.base)


def _one_step(model, tokenizer, precision, adapters=None, names=None):
    """Logits of the first decode step after the fast path's prefill, through `DecodeStep`."""
    names = names or [None] * 4
    items = [
        GenerationItem(ids_of(tokenizer, p), 4, 0, adapter=name)
        for p, name in zip(PROMPTS[:4], names, strict=True)
    ]
    input_ids, attention, positions = _layout(items, 0, tokenizer.pad_token_id)
    step = DecodeStep(model, precision)
    with torch.inference_mode():
        cache, hidden = prefill_static(
            step, items, input_ids, attention, positions, 0, adapters, True
        )
        with routing(adapters, names, None):
            return step(step.greedy(hidden), cache.positions(), cache)


def test_bf16_matmuls_stay_close_to_fp32_logits(tiny):
    model, tokenizer, adapter_dirs = tiny
    full = _one_step(model, tokenizer, "fp32")
    half = _one_step(model, tokenizer, "bf16")
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)  # it really ran in reduced precision
    scale = full.abs().max()
    assert (half - full).abs().max() < 0.05 * scale
    assert torch.equal(half.argmax(-1), full.argmax(-1))
    lora = MultiLora(model)
    try:
        lora.load("a", adapter_dirs["a"])
        names = ["a", None, "a", None]
        full_a = _one_step(model, tokenizer, "fp32", lora, names)
        half_a = _one_step(model, tokenizer, "bf16", lora, names)
        assert not torch.allclose(full_a[0], full[0])  # the adapter changes row 0 ...
        assert (half_a - full_a).abs().max() < 0.05 * full_a.abs().max()  # ... in bf16 too
    finally:
        _unwrap(model, lora)


def test_cache_keeps_columns_through_growth_and_compaction():
    cache = StaticKVCache.empty(rows=2, layers=1, kv_heads=1, head_dim=2, capacity=4)
    keys = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 1, 2)
    cache.open_columns(torch.tensor([[False, True, True], [True, True, True]]))
    cache.write(0, keys.view(6, 1, 2), -keys.view(6, 1, 2))  # a 3-column prefill
    for step in range(3):  # the second and third columns overflow: one growth
        cache.open_columns()
        new = torch.full((2, 1, 2), 100.0 + step)
        k, v = cache.write(0, new, -new)
    assert cache.capacity == 4 + GROW_COLUMNS and k.shape == (2, 1, 6, 2)
    assert torch.equal(k[:, :, :3], keys.transpose(1, 2)) and torch.equal(v, -k)
    assert torch.equal(k[:, :, 5], torch.full((2, 1, 2), 102.0))
    assert cache.mask()[0, 0, 0].tolist() == [False, True, True, True, True, True]
    assert cache.positions().tolist() == [5, 6]
    cache.compact(torch.tensor([1]))
    assert cache.rows == 1 and cache.mask()[0, 0, 0].all()
    assert torch.equal(cache.keys[0][0, :, :3], keys[1].transpose(0, 1))


def test_a_prefill_mask_is_causal_and_never_empty():
    cache = StaticKVCache.empty(rows=2, layers=1, kv_heads=1, head_dim=2, capacity=8)
    cache.open_columns(torch.tensor([[False, False, True], [True, True, True]]))
    mask = cache.mask(3)[:, 0].int().tolist()
    # row 0 is padded twice: its padding queries see only themselves, its token itself
    assert mask[0] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert mask[1] == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_an_unknown_precision_is_refused(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="precision"):
        DecodeStep(model, "int3")


def test_bf16_falls_back_where_a_projection_is_wrapped_by_something_unknown(tiny):
    import copy

    model, tokenizer, _ = tiny
    wrapped = copy.deepcopy(model)
    attention = wrapped.model.layers[1].self_attn
    attention.q_proj = torch.nn.Sequential(attention.q_proj)  # e.g. a foreign adapter wrapper
    assert supports(wrapped, "fp32") and not supports(wrapped, "bf16")

    def items():
        return [GenerationItem(ids_of(tokenizer, p), 10, 0) for p in PROMPTS[:3]]

    generic = generate_batch(wrapped, tokenizer, items(), set(), fast=False)
    asked_bf16 = generate_batch(wrapped, tokenizer, items(), set(), precision="bf16")
    assert [a.token_ids for a in asked_bf16] == [g.token_ids for g in generic]
    # fp32 keeps the fast loop, calling the model's modules instead of packed weights
    assert DecodeStep(wrapped).weights is None and DecodeStep(model).weights is not None
    fast = generate_batch(wrapped, tokenizer, items(), set(), fast=True)
    assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
    with pytest.raises(ValueError, match="precision"):
        generate_batch(wrapped, tokenizer, items(), set(), precision="fp8")


def test_a_shared_prefix_held_once_gives_the_logits_of_one_copied_per_row(tiny):
    model, tokenizer, _ = tiny
    items = [GenerationItem(prompt_ids=ids_of(tokenizer, p, SYSTEM)) for p in PROMPTS]
    shared = _shared_prefix_len(items)
    assert shared >= 8
    input_ids, attention, positions = _layout(items, shared, pad_id=0)
    step = DecodeStep(model)
    outputs = {}
    for once in (False, True):
        with torch.inference_mode():
            static, hidden = prefill_static(
                step, items, input_ids, attention, positions, shared, None, once
            )
            assert static.prefix_length == (shared if once else 0)
            assert static.length == attention.shape[1] - (shared if once else 0)
            logits = step.logits(hidden)
            tokens, steps = logits.argmax(-1), [logits]
            for _ in range(6):  # through a growth of the per-row buffers
                logits = step(tokens, static.positions(), static)
                tokens = logits.argmax(-1)
                steps.append(logits)
            static.compact(torch.tensor([4, 1]))  # finished rows leave; the prefix stays
            steps.append(step(tokens[[4, 1]], static.positions(), static))
        outputs[once] = steps
    for copied, held_once in zip(outputs[False], outputs[True], strict=True):
        assert torch.allclose(copied, held_once, atol=1e-4, rtol=1e-4)
        assert torch.equal(copied.argmax(-1), held_once.argmax(-1))


def test_the_screened_greedy_pick_is_the_fp32_argmax(tiny):
    from assay.models.decode_weights import HeadWeights

    model, _, _ = tiny
    head = torch.nn.Linear(32, 300, bias=False)  # 300 tokens: the last screen block is padded
    torch.manual_seed(3)
    with torch.no_grad():
        head.weight.normal_()
        head.weight[::5] *= 4  # rows of very different norms
        head.weight[7] = head.weight[250]  # two tokens with equal logits everywhere
    head.requires_grad_(False)
    weights = HeadWeights(head, torch.float32, screen=True)  # on any CPU
    hidden = torch.randn(64, 32) * 3
    hidden[0] = head.weight[250] * 10  # rows 0 and 1: tokens 7 and 250 tie for the maximum
    hidden[1] = head.weight[7] * 10
    full = torch.nn.functional.linear(hidden, head.weight)
    assert full[0, 7] == full[0, 250] == full[0].max()
    with torch.inference_mode():
        picked = weights.greedy(hidden)
    assert torch.equal(picked, full.argmax(-1))
    assert picked[:2].tolist() == [7, 7]  # ties go to the lowest id, as torch.argmax
    # rows where the bound cannot hold (NaN, inf) take the plain argmax of their logits
    broken = hidden[:3].clone()
    broken[1, 0] = float("nan")
    broken[2, 0] = float("inf")
    with torch.inference_mode():
        picked = weights.greedy(broken)
    plain = torch.nn.functional.linear(broken, head.weight).argmax(-1)
    assert torch.equal(picked, plain)

    def forbid_best(logits):  # a grammar mask: the full logits, by token id
        logits[torch.arange(len(logits)), full[: len(logits)].argmax(-1)] = float("-inf")

    with torch.inference_mode():
        masked = weights.greedy(hidden[2:10], forbid_best)
    expected = full[2:10].clone()
    forbid_best(expected)
    assert torch.equal(masked, expected.argmax(-1))


def test_the_screen_keeps_a_token_that_bf16_rounding_puts_behind():
    from assay.models.decode_weights import HeadWeights

    # token 20's fp32 logit beats token 10's by eps, but rounding the weights to bf16 puts
    # token 10 ahead by 2**-7: the screen must keep both and the fp32 logits decide
    eps = 2.0**-14
    head = torch.nn.Linear(4, 100, bias=False).requires_grad_(False)
    head.weight.zero_()
    head.weight[10] = torch.tensor([1.0 + 2.0**-8 + eps, 1.0, 0.0, 0.0])  # bf16: 1 + 2**-7
    head.weight[20] = torch.tensor([1.0 + 2.0**-8 - eps, 1.0, 3 * eps, 0.0])  # bf16: 1
    hidden = torch.tensor([[1.0, -1.0, 1.0, 0.0]])
    full = torch.nn.functional.linear(hidden, head.weight)
    bf16 = torch.nn.functional.linear(hidden.bfloat16(), head.weight.bfloat16()).float()
    assert full.argmax().item() == 20 and bf16.argmax().item() == 10
    weights = HeadWeights(head, torch.float32, screen=True)
    with torch.inference_mode():
        assert weights.greedy(hidden).tolist() == [20]
        weights.c = 0.0  # without the bound the screen alone would pick token 10
        assert weights.greedy(hidden).tolist() == [10]


def test_the_screen_is_used_only_where_bf16_is_native():
    from assay.models.decode_weights import HeadWeights, native_bf16

    head = torch.nn.Linear(8, 64, bias=False).requires_grad_(False)
    auto = HeadWeights(head, torch.float32)
    assert (auto.screen is not None) == native_bf16(torch.device("cpu"))
    plain = HeadWeights(head, torch.float32, screen=False)
    hidden = torch.randn(5, 8)
    with torch.inference_mode():
        expected = torch.nn.functional.linear(hidden, head.weight).argmax(-1)
        assert plain.screen is None and torch.equal(plain.greedy(hidden), expected)
        assert torch.equal(auto.greedy(hidden), expected)


def test_projection_biases_are_kept(tiny):
    """Qwen2-style q/k/v biases (here a Llama with `attention_bias`) go into the fused
    projection: fast greedy answers still equal the generic path's."""
    from transformers import LlamaForCausalLM

    _, tokenizer, _ = tiny
    config = tiny_llama_config(tokenizer, attention_bias=True)
    torch.manual_seed(5)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # clear-cut greedy choices, as in the tiny model
        for layer in model.model.layers:
            layer.self_attn.q_proj.bias.normal_()
            layer.self_attn.v_proj.bias.normal_()
    assert DecodeStep(model).weights.layers[0].qkv.bias is not None

    def items():
        return [GenerationItem(ids_of(tokenizer, p, SYSTEM), 12, 0) for p in PROMPTS]

    generic, fast = both_paths(model, tokenizer, items)
    assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
    _, half = both_paths(model, tokenizer, items, precision="bf16")
    assert all(len(h.token_ids) > 0 for h in half)
