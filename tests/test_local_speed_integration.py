"""The fast decode path on the embedded SmolLM2-135M (slow: marked integration).

Greedy answers of the fast path (oneDNN-packed fp32 weights, native prefill into a static KV
cache, the screened exact argmax) must equal the generic transformers path token for token on
the real model: with and without a system prompt held once as a shared prefix, left padding,
and rows that stop on eos at different steps. bf16 runs the same batch to the same lengths.
"""

from __future__ import annotations

import pytest

from assay.models.batch_generate import GenerationItem, generate_batch
from assay.models.fast_decode import supports
from assay.models.registry import EMBEDDED_ALIAS, load_model

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of France?",
    "List three colours.",
    "Explain what a glacier is in simple words for a child who is seven years old.",
    "Write a SQL query that counts the rows of a table called races.",
]
SYSTEM = "You are a careful assistant. Answer in one or two short sentences."


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_ALIAS, device="cpu")


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["no-system", "shared-system-prompt"])
def test_fast_greedy_equals_generic_greedy_on_the_embedded_model(embedded, system):
    model, tokenizer = embedded
    assert supports(model) and supports(model, "bf16")
    eos = {tokenizer.eos_token_id}

    def items():
        out = []
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(GenerationItem(ids, max_new_tokens=32, temperature=0))
        return out

    generic = generate_batch(model, tokenizer, items(), eos, fast=False)
    fast = generate_batch(model, tokenizer, items(), eos, fast=True)
    assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
    assert [f.finish_reason for f in fast] == [g.finish_reason for g in generic]
    assert all(len(f.token_ids) > 0 for f in fast)
    half = generate_batch(model, tokenizer, items(), eos, fast=True, precision="bf16")
    assert all(0 < len(h.token_ids) <= 32 for h in half)
