"""Supervised fine-tuning: TRL `SFTTrainer` on an assay dataset, LoRA by default.

Data: every exported format (`messages` with tool calls, `prompt` / `completion`), converted
by `assay.train.data.sft_rows` to prompt / completion pairs, so TRL's completion-only loss
masks the prompt (SmolLM2's template has no generation markers for `assistant_only_loss`).
Defaults for a 135M model on a CPU: LoRA r=16, alpha=32, all linear layers, lr 5e-4 cosine,
batch 16, max_length 128, 2 epochs. Packing (`packing=True`, best-fit decreasing) cuts
padding; `eval_fraction` holds out a split; `early_stopping_patience` stops on eval loss.

A dataset whose loss mask leaves no trainable token (every completion cut off by
`max_length`, or empty) stops with `TrainingSignalError` before training.

Example:
    from assay.train import sft
    result = sft("verified.parquet", model="smollm2-135m", name="adder", epochs=2)
    # result.model_name == "smollm2-135m+adder", usable as local/smollm2-135m+adder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.train import data
from assay.train.runner import (
    TrainingSignalError,
    TrainResult,
    TrainSettings,
    early_stopping,
    execute,
    load_policy,
    peft_config_for,
    trl_args,
)


@dataclass
class SFTSettings(TrainSettings):
    """`packing`: pack examples into full `max_length` rows (no padding)."""

    packing: bool = False


def check_trainable_tokens(dataset: Any, max_length: int, n_rows: int) -> int:
    """The number of completion tokens the loss sees; raises when it is zero.

    TRL drops rows whose completion was cut off entirely, so an empty dataset means the
    same thing as an all-zero mask."""
    if len(dataset) == 0:
        total = 0
    elif "completion_mask" in dataset.column_names:
        total = sum(sum(mask) for mask in dataset["completion_mask"])
    else:
        total = sum(len(ids) for ids in dataset["input_ids"])
    if total == 0:
        raise TrainingSignalError(
            f"the loss mask leaves no trainable token in {n_rows} rows: every completion is "
            f"empty or cut off at max_length={max_length} (the prompt fills it). Raise "
            "--max-length or shorten the prompts."
        )
    return total


def build_sft_trainer(settings: SFTSettings, train_rows, eval_rows, callbacks, output_dir):
    """The TRL `SFTTrainer` for prompt / completion rows (used by sft and distill)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, _ = load_policy(settings.model)
    has_eval = bool(eval_rows)
    config = SFTConfig(
        **trl_args(settings, output_dir, has_eval),
        max_length=settings.max_length,
        packing=settings.packing,
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(data.sft_rows(train_rows, tokenizer)),
        eval_dataset=Dataset.from_list(data.sft_rows(eval_rows, tokenizer)) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config_for(settings, model),
        callbacks=[*callbacks, *early_stopping(settings, has_eval)],
    )
    check_trainable_tokens(trainer.train_dataset, settings.max_length, len(train_rows))
    return trainer


def sft(dataset: str | Path | list[dict[str, Any]], **options: Any) -> TrainResult:
    """Fine-tune `options["model"]` on `dataset`; options are `SFTSettings` fields."""
    settings = SFTSettings(**options)
    rows = data.load_rows(dataset)
    ids = data.row_ids(rows)
    train_rows, train_ids, eval_rows, eval_ids = data.split_eval(
        rows, ids, settings.eval_fraction, settings.seed
    )

    def build(callbacks, output_dir):
        return build_sft_trainer(settings, train_rows, eval_rows, callbacks, output_dir)

    return execute("sft", settings, build, {"train": train_ids, "eval": eval_ids})
