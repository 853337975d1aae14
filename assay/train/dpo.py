"""Direct preference optimisation: TRL `DPOTrainer` on `prompt` / `chosen` / `rejected` rows.

Where the pairs come from: the pairwise judge's output (`prompt`, `chosen`, `rejected`),
`assay feedback export` (step feedback, same columns), or verified samples via
`pairs_from_verified` (a correct and an incorrect completion of the same prompt). With LoRA
the reference model is the base with the adapter switched off (no second copy in memory).
Defaults: beta 0.1, lr 5e-5 (LoRA), batch 8, max_length 256.

Example:
    from assay.train import dpo
    dpo("pairs.parquet", model="smollm2-135m+adder", name="adder-dpo")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.train import data
from assay.train.runner import (
    TrainResult,
    TrainSettings,
    early_stopping,
    execute,
    load_policy,
    peft_config_for,
    trl_args,
)


@dataclass
class DPOSettings(TrainSettings):
    """`beta`: the strength of the pull towards the reference model."""

    beta: float = 0.1
    learning_rate: float = 5e-5
    batch_size: int = 8
    max_length: int = 256


def pairs_from_verified(
    rows: list[dict[str, Any]],
    prompt_column: str = "prompt",
    completion_column: str = "generation",
    correct_column: str = "correct",
) -> list[dict[str, Any]]:
    """One (chosen, rejected) pair per prompt that has a correct and an incorrect sample.

    Input columns: `prompt_column` (string or messages), `completion_column` (string),
    `correct_column` (bool). Output columns: `id`, `prompt`, `chosen`, `rejected`.
    """
    groups: dict[str, dict[str, Any]] = {}
    for k, row in enumerate(rows):
        for column in (prompt_column, completion_column, correct_column):
            if column not in row:
                raise AssayError(f"row {k}: no column {column!r} (columns: {', '.join(row)})")
        key = repr(row[prompt_column])
        group = groups.setdefault(key, {"prompt": row[prompt_column], "good": [], "bad": []})
        group["good" if row[correct_column] else "bad"].append(
            (row.get("id"), row[completion_column])
        )
    pairs = []
    for group in groups.values():
        for (good_id, good), (bad_id, bad) in zip(group["good"], group["bad"], strict=False):
            pairs.append(
                {
                    "id": f"{good_id}|{bad_id}",
                    "prompt": group["prompt"],
                    "chosen": good,
                    "rejected": bad,
                }
            )
    if not pairs:
        raise AssayError("no prompt has both a correct and an incorrect sample: no DPO pairs")
    return pairs


def dpo(dataset: str | Path | list[dict[str, Any]], **options: Any) -> TrainResult:
    """Preference-tune `options["model"]` on `dataset`; options are `DPOSettings` fields."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    settings = DPOSettings(**options)
    rows = data.load_rows(dataset)
    ids = data.row_ids(rows)
    train_rows, train_ids, eval_rows, eval_ids = data.split_eval(
        rows, ids, settings.eval_fraction, settings.seed
    )
    train, held = data.preference_rows(train_rows), data.preference_rows(eval_rows)

    def build(callbacks, output_dir):
        model, tokenizer, _ = load_policy(settings.model)
        config = DPOConfig(
            **trl_args(settings, output_dir, bool(held)),
            beta=settings.beta,
            max_length=settings.max_length,
        )
        return DPOTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(train),
            eval_dataset=Dataset.from_list(held) if held else None,
            processing_class=tokenizer,
            peft_config=peft_config_for(settings, model),
            callbacks=[*callbacks, *early_stopping(settings, bool(held))],
        )

    return execute("dpo", settings, build, {"train": train_ids, "eval": eval_ids})
