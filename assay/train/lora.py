"""LoRA defaults for small models, and the PEFT config they turn into.

Defaults that worked for SmolLM2-135M on a CPU (held-out accuracy on the addition task from
4.7% to ~75% in 2 epochs x 256 examples): rank 16, alpha 32, every linear layer. TRL's own
guidance: a LoRA learning rate about 10x the full fine-tuning one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LoraSettings:
    """`r` (rank), `alpha` (scale = alpha / r), `dropout`, `target_modules`
    ("all-linear" or a list such as ["q_proj", "v_proj"])."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


def lora_is_trained(model: Any) -> bool:
    """Whether any LoRA `B` matrix is non-zero (a fresh adapter has B = 0: it is the base)."""
    found = False
    for name, param in model.named_parameters():
        if "lora_B" in name:
            found = True
            if bool(param.detach().abs().sum() > 0):
                return True
    return not found
