"""A real GRPOTrainer optimizer step with BFCL's environments as TRL's dict
`environment_factory` (`bfcl_trl_dataset`), on a tiny randomly initialised model.

The tokenizer is a byte-level BPE trained on the BFCL prompts themselves (a 360-token one
would turn a 3-4k-word BFCL prompt into ~20k tokens), so prompts keep a real model's length
and the step runs in seconds. TRL renders each example's tools (its environment's public
methods), generates, runs its tool-calling loop, calls `reset(**row)` on a pooled instance
of the example's environment and `get_reward()` (BFCL's multi-turn checker) after the
episode; a second, graded reward gives GRPO's groups variance so the step moves the weights.
A random model writes no parseable tool call, so TRL's loop dispatches none here (its log
says `tools/call_frequency` 0.0 and BFCL's reward is 0.0); `test_tools_trl_bfcl.py` calls
the environments' methods the way TRL's loop does. One step took 87 s of wall time on the
shared 2-core machine at load average 6 (prompts ~3k tokens, 4 rollouts of 16 tokens).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TASKS = ["multi_turn_base_1", "multi_turn_base_150"]  # two API-class combinations


def build_bfcl_tiny_model(directory: Path, texts: list[str], seed: int = 0) -> Path:
    """A 2-layer random Llama with a byte-level BPE trained on `texts` (plus ChatML)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = (  # ChatML without tools: grpo() swaps in TRL's Qwen2.5 one
        "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


@contextmanager
def registered(root: Path, model_dir: Path, alias: str) -> Iterator[None]:
    from assay.models.registry import register_model

    old = os.environ.get("ASSAY_MODEL_CACHE")
    os.environ["ASSAY_MODEL_CACHE"] = str(root / "cache")
    try:
        register_model(alias, model_dir)
        yield
    finally:
        if old is None:
            os.environ.pop("ASSAY_MODEL_CACHE", None)
        else:
            os.environ["ASSAY_MODEL_CACHE"] = old


def test_grpo_trainer_steps_with_the_bfcl_environment_factory(tmp_path: Path) -> None:
    import torch
    from transformers.utils import get_json_schema

    from assay.operators.tools.trl import bfcl_trl_dataset
    from assay.train.grpo import grpo

    factories, rows = bfcl_trl_dataset(TASKS, turns="first")
    assert len(factories) == 2  # two API-class combinations, two TRL environments
    texts = [json.dumps(r["prompt"]) for r in rows]
    for factory in factories.values():
        instance = factory()
        methods = [
            m
            for m in dir(type(instance))
            if not m.startswith("_") and m not in ("reset", "get_reward")
        ]
        texts += [json.dumps(get_json_schema(getattr(instance, m))) for m in methods]
    model_dir = build_bfcl_tiny_model(tmp_path / "model", texts * 2)

    resets: list[dict[str, Any]] = []
    rewards_seen: list[list[float]] = []
    originals = {name: f.reset for name, f in factories.items()}

    def spy(name: str):
        def reset(self, **row):
            resets.append({"environment": name, **row})
            return originals[name](self, **row)

        return reset

    for name, factory in factories.items():
        factory.reset = spy(name)

    def graded(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        """Shorter completions score higher: variance inside every group."""
        from assay.judges.base import completion_text

        scores = [-len(completion_text(c)) / 100.0 for c in completions]
        rewards_seen.append(scores)
        return scores

    with registered(tmp_path, model_dir, "tiny-bfcl"):
        result = grpo(
            rows,
            [],
            [graded],
            environment_factory=factories,
            model="tiny-bfcl",
            workspace=str(tmp_path / "ws"),
            max_steps=1,
            num_generations=2,
            batch_size=4,
            max_completion_length=16,
            learning_rate=1e-2,
            patience=10,
        )

    # TRL reset every rollout's environment with its row (minus the routing field)
    assert {(r["environment"], r["bfcl_id"], r["turn"]) for r in resets} == {
        (row["environment"], row["bfcl_id"], 0) for row in rows
    }
    assert all("prompt" in r for r in resets)
    # the environments' own reward (BFCL's checker) was logged next to ours
    logged = {k for h in result.log_history for k in h if k.startswith("rewards/")}
    assert "rewards/graded/mean" in logged, logged
    for factory in factories.values():
        assert f"rewards/{factory.__name__}/mean" in logged, logged
    assert rewards_seen and len(rewards_seen[0]) == 4
    steps = [h["step"] for h in result.log_history if "step" in h]
    assert max(steps) == 1, result.log_history
    # the step moved the LoRA weights: B starts at zero and is non-zero after it
    from safetensors.torch import load_file

    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(bool(torch.count_nonzero(v)) for v in lora_b)
