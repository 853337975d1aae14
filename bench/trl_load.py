"""Load exported datasets into TRL unchanged: SFT and DPO data preparation on the embedded model.

    .venv/bin/assay export-data RUN_ID --format messages --out out/sql-sft
    .venv/bin/assay export-data RUN_ID --format preference --out out/sql-dpo
    .venv/bin/python bench/trl_load.py --sft out/sql-sft --dpo out/sql-dpo

Each export's Parquet is read with `datasets.load_dataset("parquet", ...)` and handed, as is,
to TRL's `SFTTrainer` (messages, prompt/completion) or `DPOTrainer` (prompt/chosen/rejected)
with the embedded SmolLM2-135M and its tokenizer; SmolLM2's chat template renders no tool
calls, so the tokenizer gets TRL's Qwen2.5 template (the same ChatML tokens; what assay's
GRPO uses, `assay.train.grpo.use_tool_template`). Prints, per export, the rows TRL prepared,
the token counts, and the first prepared example decoded, so one can read what TRL will
train on (tool calls, tool results, the tools offered). No training step is taken.
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
from pathlib import Path


def _load(folder: str):  # noqa: ANN202 - a datasets.Dataset
    import datasets

    files = sorted(glob.glob(str(Path(folder) / "data" / "*.parquet")))
    if not files:
        raise SystemExit(f"{folder}: no data/*.parquet (an `assay export-data` folder?)")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", nargs="*", default=[], help="messages or prompt/completion")
    parser.add_argument("--dpo", nargs="*", default=[], help="preference exports")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-length", type=int, default=4096)
    args = parser.parse_args()

    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from assay.models.registry import load_model
    from assay.train.grpo import use_tool_template

    model, tokenizer = load_model(args.model, device="cpu")
    tokenizer.padding_side = "right"
    use_tool_template(tokenizer)
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(
            output_dir=tmp,
            use_cpu=True,
            bf16=False,
            report_to=[],
            max_length=args.max_length,
            dataset_num_proc=None,
        )
        trainers = {"sft": (SFTTrainer, SFTConfig), "dpo": (DPOTrainer, DPOConfig)}
        jobs = [("sft", f) for f in args.sft] + [("dpo", f) for f in args.dpo]
        for kind, folder in jobs:
            trainer_class, config_class = trainers[kind]
            loaded = _load(folder)
            trainer = trainer_class(
                model=model,
                args=config_class(**common),
                train_dataset=loaded,
                processing_class=tokenizer,
            )
            prepared = trainer.train_dataset
            entry: dict[str, object] = {
                "kind": kind,
                "columns": loaded.column_names,
                "rows_loaded": loaded.num_rows,
                "rows_prepared": prepared.num_rows,
            }
            first = prepared[0]
            id_columns = ["input_ids"] if kind == "sft" else ["chosen_ids", "rejected_ids"]
            for column in id_columns:
                lengths = [len(x) for x in prepared[column]]
                entry[f"{column.removesuffix('_ids')}_tokens"] = sum(lengths)
                entry[f"{column.removesuffix('_ids')}_longest"] = max(lengths)
                print(f"== {folder}: first prepared example, {column}")
                print(tokenizer.decode(first[column]))
            report[folder] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
