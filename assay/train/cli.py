"""CLI verbs: `assay train sft|distill|dpo|grpo|report`, `assay eval`, `assay export`.

Every flag maps to a field of the method's settings (`--learning-rate` -> `learning_rate`).
Data is a file or directory (`DATA`), or `--task arithmetic --limit 256` for a task's
training split (gold targets; for GRPO the prompts and gold answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

train_app = typer.Typer(help="Train small models on curated datasets (TRL + peft).")

Data = Annotated[str | None, typer.Argument(help="Dataset: Parquet/JSONL file or directory.")]
Model = Annotated[str, typer.Option(help="Base model or base+adapter (registry name).")]
Name = Annotated[str | None, typer.Option(help="Registered name: <base>+<name>.")]
Task = Annotated[str | None, typer.Option(help="Use this task's training split as data.")]
Limit = Annotated[int, typer.Option(help="Rows taken from --task.")]
Style = Annotated[str, typer.Option(help="Prompt style of --task rows: full or short.")]


def _rows(data: str | None, task: str | None, kind: str, limit: int, style: str) -> Any:
    from assay.curate.errors import AssayError
    from assay.train.tasks import task_rows

    if data:
        return data
    if task:
        return task_rows(task, kind, limit, style)
    raise AssayError("give a dataset path or --task NAME")


def _common(**kw: Any) -> dict[str, Any]:
    out = {k: v for k, v in kw.items() if v is not None}
    if "lora_r" in out:
        from assay.train.lora import LoraSettings

        out["lora"] = LoraSettings(r=out.pop("lora_r"), alpha=out.pop("lora_alpha"))
    return out


def _done(result: Any) -> None:
    typer.echo(f"run {result.run_id}: saved {result.adapter_dir}")
    if result.model_name:
        typer.echo(f"registered as local/{result.model_name}")


@train_app.command("sft")
def sft_cmd(
    data: Data = None,
    model: Model = "smollm2-135m",
    name: Name = None,
    task: Task = None,
    limit: Limit = 256,
    prompt_style: Style = "short",
    epochs: float = 2.0,
    max_steps: int = -1,
    learning_rate: float = 5e-4,
    batch_size: int = 16,
    max_length: int = 128,
    lora_r: int = 16,
    lora_alpha: int = 32,
    full: bool = False,
    packing: bool = False,
    eval_fraction: float = 0.0,
    early_stopping_patience: int = 0,
    save_steps: int = 50,
    output_dir: str | None = None,
    workspace: str = ".assay",
) -> None:
    """Supervised fine-tuning (LoRA by default; loss on completion tokens only)."""
    params = dict(locals())
    from assay.train.sft import sft

    opts = _common(
        **{k: v for k, v in params.items() if k not in ("data", "task", "limit", "prompt_style")}
    )
    _done(sft(_rows(data, task, "sft", limit, prompt_style), **opts))


@train_app.command("distill")
def distill_cmd(
    data: Data = None,
    mode: str = "sequence",
    teacher: str | None = None,
    model: Model = "smollm2-135m",
    name: Name = None,
    task: Task = None,
    limit: Limit = 256,
    prompt_style: Style = "short",
    temperature: float = 1.0,
    alpha: float = 0.5,
    epochs: float = 2.0,
    max_steps: int = -1,
    learning_rate: float = 5e-4,
    batch_size: int = 16,
    max_length: int = 256,
    lora_r: int = 16,
    lora_alpha: int = 32,
    save_steps: int = 50,
    output_dir: str | None = None,
    workspace: str = ".assay",
) -> None:
    """Distillation: sequence (SFT on teacher outputs), token (KL), context, on-policy."""
    params = dict(locals())
    from assay.train.distill import distill

    opts = _common(
        **{k: v for k, v in params.items() if k not in ("data", "task", "limit", "prompt_style")}
    )
    _done(distill(_rows(data, task, "sft", limit, prompt_style), **opts))


@train_app.command("dpo")
def dpo_cmd(
    data: Annotated[str, typer.Argument(help="prompt / chosen / rejected rows.")],
    model: Model = "smollm2-135m",
    name: Name = None,
    beta: float = 0.1,
    epochs: float = 2.0,
    max_steps: int = -1,
    learning_rate: float = 5e-5,
    batch_size: int = 8,
    max_length: int = 256,
    lora_r: int = 16,
    lora_alpha: int = 32,
    save_steps: int = 50,
    output_dir: str | None = None,
    workspace: str = ".assay",
) -> None:
    """Direct preference optimisation on chosen / rejected pairs."""
    params = dict(locals())
    from assay.train.dpo import dpo

    opts = _common(**{k: v for k, v in params.items() if k != "data"})
    _done(dpo(data, **opts))


@train_app.command("grpo")
def grpo_cmd(
    data: Data = None,
    task: Task = None,
    limit: Limit = 64,
    prompt_style: Style = "short",
    verifier: Annotated[str | None, typer.Option(help="module:Class of a Verifier.")] = None,
    format_regex: Annotated[str | None, typer.Option(help="Add a format reward.")] = None,
    model: Model = "smollm2-135m",
    name: Name = None,
    num_generations: int = 4,
    batch_size: int = 8,
    max_completion_length: int = 32,
    temperature: float = 1.0,
    learning_rate: float = 1e-5,
    max_steps: int = -1,
    epochs: float = 1.0,
    patience: int = 5,
    lora_r: int = 16,
    lora_alpha: int = 32,
    use_vllm: bool = False,
    save_steps: int = 50,
    output_dir: str | None = None,
    workspace: str = ".assay",
) -> None:
    """GRPO with assay verifiers as rewards (SFT first on a CPU)."""
    params = dict(locals())
    import importlib

    from assay.curate.errors import AssayError
    from assay.train.grpo import format_reward, grpo
    from assay.train.tasks import get_task

    verifiers = []
    if verifier:
        module, _, attr = verifier.partition(":")
        verifiers.append(getattr(importlib.import_module(module), attr)())
    elif task:
        verifiers.append(get_task(task).verifier)
    else:
        raise AssayError("give --verifier module:Class or --task NAME (its verifier rewards)")
    extra = [format_reward(format_regex)] if format_regex else []
    skip = ("data", "task", "limit", "prompt_style", "verifier", "format_regex")
    opts = _common(**{k: v for k, v in params.items() if k not in skip})
    _done(grpo(_rows(data, task, "grpo", limit, prompt_style), verifiers, extra, **opts))


@train_app.command("report")
def report_cmd(
    runs: Annotated[list[str], typer.Argument(help="Training run ids to plot.")],
    model: Annotated[list[str], typer.Option(help="Models to evaluate (repeat).")] = [],  # noqa: B006
    task: Annotated[list[str], typer.Option(help="Tasks (repeat; 'general' = MMLU+ARC).")] = [],  # noqa: B006
    limit: int | None = None,
    out: Path = Path("report"),
    workspace: str = ".assay",
) -> None:
    """Markdown + HTML report: loss / reward curves of RUNS and an evaluation table."""
    from assay.train.eval import evaluate
    from assay.train.report import write_report

    results = evaluate(model, task, limit=limit, workspace=workspace) if model and task else []
    typer.echo(str(write_report(out, "Training report", results, runs, workspace=workspace)))


def eval_cmd(
    model: Annotated[list[str], typer.Option(help="Model (repeat for a side-by-side table).")],
    task: Annotated[list[str], typer.Option(help="Task (repeat); 'general' = MMLU + ARC.")],
    prompt_style: Annotated[str, typer.Option(help="full or short.")] = "full",
    limit: Annotated[int | None, typer.Option(help="First N rows of each task.")] = None,
    batch_size: int = 32,
    workspace: str = ".assay",
) -> None:
    """Accuracy, prompt / completion tokens and latency per query, model by model."""
    from assay.train.eval import evaluate, results_table

    typer.echo(results_table(evaluate(model, task, prompt_style, limit, batch_size, workspace)))


def export_cmd(
    model: Annotated[str, typer.Argument(help="base+adapter to export.")],
    out: Annotated[Path, typer.Option(help="Output directory.")],
    adapter_only: Annotated[bool, typer.Option(help="Save the adapter alone.")] = False,
) -> None:
    """Merge a LoRA adapter into full safetensors weights, or copy the adapter alone."""
    from assay.train.export import export_model

    typer.echo(str(export_model(model, out, merge=not adapter_only)))


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("eval")(eval_cmd)
    app.command("export")(export_cmd)


def run_summary(store, run_id: str) -> list[str] | None:  # noqa: ANN001
    """`assay show` lines for a training run (None for other runs)."""
    from assay.train.store import training_summary

    return training_summary(store, run_id)
