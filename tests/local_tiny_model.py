"""A tiny randomly initialised chat model (2-layer Llama, byte-level BPE) and LoRA adapters.

Built in a second or two, saved as a normal Hugging Face model directory, so the local
backend, the registry, constrained decoding and `assay serve` are exercised on the real
code paths without the embedded model's load time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    'What is the weather in Paris? {"city": "Paris", "ok": true, "n": 12}',
    "The quick brown fox jumps over the lazy dog. 0123456789",
    'assistant user system [{"name": "get_weather", "arguments": {"city": "Rome"}}]',
    "red green blue true false null yes no SELECT * FROM t WHERE x = 1;",
]


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    return fast


def tiny_llama_config(tokenizer: Any, **overrides: Any) -> LlamaConfig:
    """The tiny model's `LlamaConfig` (2 layers, hidden size 32) for `tokenizer`; `overrides`
    set other fields (e.g. `attention_bias=True`)."""
    from transformers import LlamaConfig

    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**{**fields, **overrides})


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama chat model (and its tokenizer) to `directory`."""
    import torch
    from transformers import LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = tiny_llama_config(tokenizer)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # a larger output scale makes greedy choices clear-cut (no near-ties between tokens)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(directory)
    return directory


def build_lora_adapter(model_dir: Path, directory: Path, seed: int) -> Path:
    """Save a random (non-zero) LoRA adapter for the model in `model_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random A and B, so the adapter changes the output
    )
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(directory)
    return directory


@contextmanager
def registered_tiny_model(root: Path, alias: str = "tiny") -> Iterator[Path]:
    """A tiny model registered as `alias` in a private model cache under `root` (the
    environment's ASSAY_MODEL_CACHE is restored on exit)."""
    from assay.models.registry import register_model

    old = os.environ.get("ASSAY_MODEL_CACHE")
    os.environ["ASSAY_MODEL_CACHE"] = str(root / "cache")
    try:
        register_model(alias, build_tiny_model(root / "model"))
        yield root
    finally:
        if old is None:
            os.environ.pop("ASSAY_MODEL_CACHE", None)
        else:
            os.environ["ASSAY_MODEL_CACHE"] = old
