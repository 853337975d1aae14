"""The fast decode path on the embedded SmolLM2-135M (slow: marked integration).

Greedy answers of the fast path (static KV cache, lean decode step, fp32) must equal the
generic transformers path token for token on the real model, with a shared chat-template
prefix, left padding and rows that stop on eos at different steps.
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
]


def test_fast_greedy_equals_generic_greedy_on_the_embedded_model():
    model, tokenizer = load_model(EMBEDDED_ALIAS, device="cpu")
    assert supports(model)
    eos = {tokenizer.eos_token_id}

    def items():
        out = []
        for question in QUESTIONS:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(GenerationItem(ids, max_new_tokens=24, temperature=0))
        return out

    generic = generate_batch(model, tokenizer, items(), eos, fast=False)
    fast = generate_batch(model, tokenizer, items(), eos, fast=True)
    assert [f.token_ids for f in fast] == [g.token_ids for g in generic]
    assert [f.finish_reason for f in fast] == [g.finish_reason for g in generic]
    assert all(len(f.token_ids) > 0 for f in fast)
