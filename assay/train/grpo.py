"""Group-relative policy optimisation: TRL `GRPOTrainer` rewarded by assay's verifiers.

Rewards: the same `Verifier` objects that filter data (`verifier.reward(prompts,
completions, **columns)`, TRL's reward form), any LLM judge with that signature, plus
optional format rewards (`format_reward(regex)`). Multi-turn tool use: pass
`environment_factory` (a class whose public methods are the tools, `reset(**row)`, optional
`get_reward()`), handed to TRL as is.

CPU defaults that give signal (measured: from the base model almost every completion was cut
off and groups had no reward variance): start from an SFT model, 4 completions per prompt,
8 completions per step, `max_completion_length` 32 (room to finish), temperature 1.0, LoRA lr
1e-5, beta 0. `frac_reward_zero_std` is logged every step; a run whose groups all have zero
reward variance, or whose completions are all clipped at the length limit, for `patience`
logged steps in a row stops with `TrainingSignalError` naming the setting to change.

GPU: `use_vllm=True` (vllm_mode "colocate") generates with vLLM; raise `num_generations` to
8-16, `batch_size` to 64+, `max_completion_length` to 256+.

Example:
    from assay.train import grpo
    from assay.train.tasks import LastNumberVerifier
    grpo(rows, model="smollm2-135m+adder", verifiers=[LastNumberVerifier()], max_steps=20)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.judges.base import completion_text
from assay.train import data
from assay.train.runner import (
    TrainingSignalError,
    TrainResult,
    TrainSettings,
    execute,
    load_policy,
    peft_config_for,
    trl_args,
)


@dataclass
class GRPOSettings(TrainSettings):
    num_generations: int = 4
    batch_size: int = 8
    max_completion_length: int = 32
    temperature: float = 1.0
    learning_rate: float = 1e-5
    beta: float = 0.0
    epochs: float = 1.0
    patience: int = 5
    use_vllm: bool = False
    reward_weights: list[float] | None = field(default=None)


def format_reward(pattern: str, name: str = "format") -> Callable[..., list[float]]:
    """1.0 for a completion that fully matches `pattern` (stripped), else 0.0."""
    regex = re.compile(pattern, re.DOTALL)

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [1.0 if regex.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]

    reward.__name__ = name
    return reward


def reward_function(verifier: Any) -> Callable[..., list[float | None]]:
    """A verifier or judge as a named TRL reward function (TRL logs rewards by name)."""

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        return verifier.reward(prompts, completions, **columns)

    reward.__name__ = getattr(verifier, "name", type(verifier).__name__)
    return reward


def _guard_base():
    from transformers import TrainerCallback

    return TrainerCallback


class SignalGuard(_guard_base()):
    """Stops a run that learns nothing: zero reward variance in every group, or every
    completion clipped at `max_completion_length`, for `patience` logged steps in a row."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.zero_std = 0
        self.clipped = 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not logs or "frac_reward_zero_std" not in logs:
            return
        self.zero_std = self.zero_std + 1 if logs["frac_reward_zero_std"] >= 1.0 else 0
        clipped = logs.get("completions/clipped_ratio", 0.0)
        self.clipped = self.clipped + 1 if clipped >= 1.0 else 0
        if self.clipped >= self.patience:
            raise TrainingSignalError(
                f"every completion was clipped at max_completion_length="
                f"{args.max_completion_length} for {self.clipped} steps: no completion can "
                "finish, so rewards are meaningless. Raise --max-completion-length."
            )
        if self.zero_std >= self.patience:
            raise TrainingSignalError(
                f"every group had zero reward variance for {self.zero_std} steps "
                "(frac_reward_zero_std = 1): GRPO's advantages are all zero, nothing is "
                "learned. Start from an SFT model (--model base+adapter), raise "
                "--temperature or --num-generations, or use a graded reward."
            )


def use_tool_template(tokenizer: Any) -> None:
    """Give a ChatML tokenizer whose template cannot render tool calls (SmolLM2's) TRL's
    Qwen2.5 template: the same `<|im_start|>` / `<|im_end|>` tokens plus `<tool_call>` turns,
    which TRL's multi-turn loop needs to parse calls and append tool results."""
    from importlib.resources import files

    from trl.chat_template_utils import supports_tool_calling

    if supports_tool_calling(tokenizer):
        return
    if "<|im_start|>" not in str(tokenizer.chat_template or ""):
        raise AssayError(
            "environment_factory needs a chat template that renders tool calls; this model's "
            "does not, and it is not ChatML (so TRL's Qwen2.5 template cannot stand in)"
        )
    tokenizer.chat_template = (files("trl") / "chat_templates" / "qwen2_5.jinja").read_text()


def grpo_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with a `prompt` (string or messages); other columns go to the rewards."""
    out = []
    for k, row in enumerate(rows):
        prompt = row.get("prompt")
        if prompt is None and row.get("messages") is not None:
            messages = [data.clean_message(dict(m), True) for m in row["messages"]]
            prompt = [m for m in messages if m.get("role") != "assistant"] or messages
        if prompt is None:
            raise AssayError(f"row {k} (id {row.get('id', '?')}): GRPO needs a `prompt` column")
        if isinstance(prompt, list):
            prompt = [data.clean_message(dict(m), True) for m in prompt]
        out.append(
            {**{c: v for c, v in row.items() if c not in ("id", "messages")}, "prompt": prompt}
        )
    return out


def grpo(
    dataset: str | Path | list[dict[str, Any]],
    verifiers: list[Any],
    extra_rewards: list[Callable[..., list[float]]] | None = None,
    environment_factory: Any = None,
    **options: Any,
) -> TrainResult:
    """Reinforce `options["model"]` on `dataset`'s prompts with `verifiers` as rewards."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    settings = GRPOSettings(**options)
    if not verifiers and not extra_rewards:
        raise AssayError("GRPO needs at least one verifier, judge or reward function")
    rows = data.load_rows(dataset)
    ids = data.row_ids(rows)
    train = grpo_rows(rows)
    rewards = [reward_function(v) for v in verifiers] + list(extra_rewards or [])

    def build(callbacks, output_dir):
        model, tokenizer, _ = load_policy(settings.model)
        config = GRPOConfig(
            **trl_args(settings, output_dir, False),
            num_generations=settings.num_generations,
            max_completion_length=settings.max_completion_length,
            temperature=settings.temperature,
            beta=settings.beta,
            use_vllm=settings.use_vllm,
            reward_weights=settings.reward_weights,
            log_completions=False,
        )
        extra: dict[str, Any] = {}
        if environment_factory is not None:
            extra["environment_factory"] = environment_factory
            use_tool_template(tokenizer)
        return GRPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=config,
            train_dataset=Dataset.from_list(train),
            processing_class=tokenizer,
            peft_config=peft_config_for(settings, model),
            callbacks=[*callbacks, SignalGuard(settings.patience)],
            **extra,
        )

    config = {"rewards": [r.__name__ for r in rewards]}
    return execute("grpo", settings, build, {"train": ids}, config)
