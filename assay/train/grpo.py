"""Group-relative policy optimisation: TRL `GRPOTrainer` rewarded by assay's verifiers.

Rewards: the same `Verifier` objects that filter data (`verifier.reward(prompts,
completions, **columns)`, TRL's reward form), any LLM judge with that signature, plus
optional format rewards (`format_reward(regex)`). Multi-turn tool use: pass
`environment_factory` (a class whose public methods are the tools, `reset(**row)`, optional
`get_reward()`, or a dict of them routed by each row's `environment`), handed to TRL as is;
an assay `ToolEnvironment` subclass (`SqlEnvironment`) is wrapped with `as_trl_environment`.

An environment that scores its own episode (`get_reward()`: the SQL environment's score,
BFCL's multi-turn checker) is a reward by itself: TRL 1.16 turns every environment class
with `get_reward` into one more reward function (it receives the rollouts' `environments`
and calls `get_reward()` on those of its class; `None` for the others), named after the
class (`rewards/TrlSqlEnvironment/mean`), weight 1, after the verifiers' rewards. So a run
needs no verifier when its environment scores itself, and the environment's reward adds to
any verifiers given. `environment_rewards(factory)` names them.

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

import inspect
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


def trl_environment_factory(environment_factory: Any) -> Any:
    """`environment_factory` as TRL takes it: an assay `ToolEnvironment` subclass (whose
    `reset(row)` and helper methods TRL cannot use) wrapped with `as_trl_environment`, in a
    dict too; anything else as is."""
    if environment_factory is None:
        return None
    if isinstance(environment_factory, dict):  # one wrapper per class: one reward column
        wrapped: dict[Any, Any] = {}
        for f in environment_factory.values():
            if f not in wrapped:
                wrapped[f] = trl_environment_factory(f)
        return {k: wrapped[f] for k, f in environment_factory.items()}
    from assay.operators.tools.environment import ToolEnvironment

    if inspect.isclass(environment_factory) and issubclass(environment_factory, ToolEnvironment):
        from assay.operators.tools.trl import as_trl_environment

        try:
            return as_trl_environment(environment_factory)
        except TypeError as exc:
            raise AssayError(
                f"environment_factory: {exc}; for BFCL use "
                "assay.operators.tools.trl.bfcl_trl_dataset (a dict factory and its rows)"
            ) from None
    return environment_factory


def environment_rewards(environment_factory: Any) -> list[str]:
    """The names of the rewards TRL builds from `environment_factory`: one per distinct
    environment class that defines `get_reward()` (TRL 1.16 checks the class of one
    instance: a factory that is not a class is called once here to find it)."""
    factory = trl_environment_factory(environment_factory)
    if factory is None:
        return []
    factories = list(factory.values()) if isinstance(factory, dict) else [factory]
    seen: list[type] = []
    for f in factories:
        cls = f if inspect.isclass(f) else type(f())
        members = dict(inspect.getmembers(cls, predicate=inspect.isfunction))
        if "get_reward" in members and cls not in seen:
            seen.append(cls)
    return [cls.__name__ for cls in seen]


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


def grpo_trainer(
    train: list[dict[str, Any]],
    rewards: list[Callable[..., Any]],
    environment_factory: Any,
    settings: GRPOSettings,
    output_dir: Path,
    callbacks: list[Any] | None = None,
) -> Any:
    """TRL's `GRPOTrainer` for `grpo_rows` rows, not yet trained (what `grpo` runs)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

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
    factory = trl_environment_factory(environment_factory)
    if factory is not None:
        extra["environment_factory"] = factory
        use_tool_template(tokenizer)
    return GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=Dataset.from_list(train),
        processing_class=tokenizer,
        peft_config=peft_config_for(settings, model),
        callbacks=[*(callbacks or []), SignalGuard(settings.patience)],
        **extra,
    )


def grpo(
    dataset: str | Path | list[dict[str, Any]],
    verifiers: list[Any],
    extra_rewards: list[Callable[..., list[float]]] | None = None,
    environment_factory: Any = None,
    **options: Any,
) -> TrainResult:
    """Reinforce `options["model"]` on `dataset`'s prompts with `verifiers`, `extra_rewards`
    and the environment's own `get_reward()` (when it has one) as rewards."""
    settings = GRPOSettings(**options)
    rewards = [reward_function(v) for v in verifiers] + list(extra_rewards or [])
    from_environment = environment_rewards(environment_factory)
    if not rewards and not from_environment:
        where = (
            "no environment_factory was given"
            if environment_factory is None
            else "the environment_factory's environments define no get_reward()"
        )
        raise AssayError(
            "GRPO needs a reward: give verifiers (a Verifier or judge; CLI --verifier or "
            "--task), extra_rewards (reward functions), or an environment_factory whose "
            f"environment scores its episode with get_reward(); {where}"
        )
    if settings.reward_weights is not None and len(settings.reward_weights) != len(rewards):
        names = [r.__name__ for r in rewards]
        raise AssayError(
            f"reward_weights has {len(settings.reward_weights)} weights for the "
            f"{len(rewards)} verifier / extra rewards {names}; the environment rewards "
            f"{from_environment} are added by TRL with weight 1 (scale the others against it)"
        )
    rows = data.load_rows(dataset)
    ids = data.row_ids(rows)
    train = grpo_rows(rows)

    def build(callbacks, output_dir):
        return grpo_trainer(train, rewards, environment_factory, settings, output_dir, callbacks)

    config = {"rewards": [r.__name__ for r in rewards] + from_environment}
    return execute("grpo", settings, build, {"train": ids}, config)
