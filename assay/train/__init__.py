"""Trainers for small models: SFT (LoRA), distillation, DPO, GRPO, and evaluation."""
