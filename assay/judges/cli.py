"""`assay judge-eval` (calibrate a judge on labelled data) and `assay judge train|list`
(distilled judges). Heavy imports stay inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _params(values: list[str] | None) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in values or []:
        if "=" not in item:
            raise typer.BadParameter(f"--param {item!r}: use KEY=VALUE (VALUE as JSON or text)")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def register(app: typer.Typer) -> None:
    judge_app = typer.Typer(help="Distilled judges: train and list.", no_args_is_help=True)
    app.add_typer(judge_app, name="judge")

    @app.command("judge-eval")
    def judge_eval(
        judge: Annotated[str, typer.Argument(help="GroundingJudge, distilled:<name>, length...")],
        data: Annotated[
            str,
            typer.Option(
                help="halueval:<qa|dialogue|summarization>, a labelled file, or the "
                "step_labels/ folder of `assay feedback export` (human step labels)"
            ),
        ],
        split: Annotated[str, typer.Option(help="HaluEval split")] = "test",
        limit: Annotated[int | None, typer.Option(help="First N pairs (HaluEval) or rows")] = None,
        model: Annotated[str, typer.Option(help="Model of an LLM judge")] = "local/smollm2-135m",
        param: Annotated[list[str] | None, typer.Option(help="Judge parameter KEY=VALUE")] = None,
        label_column: Annotated[str, typer.Option(help="Bool label column of a file")] = "grounded",
        out: Annotated[Path, typer.Option(help="Report folder")] = Path("judge-eval"),
    ) -> None:
        """Judge labelled rows; report the metrics beside the length and overlap baselines."""
        from assay.judges.eval_report import table
        from assay.judges.evaluate import evaluate_on_data, write_report

        result = evaluate_on_data(judge, data, split, limit, model, _params(param), label_column)
        report = write_report(result, out)
        typer.echo(table(result))
        typer.echo(f"report: {report}")

    @judge_app.command("train")
    def train(
        name: Annotated[str, typer.Argument(help="Name to register the judge as")],
        data: Annotated[str, typer.Option(help="halueval:<set> or a labelled file")],
        split: Annotated[str, typer.Option(help="HaluEval split to train on")] = "train",
        limit: Annotated[int | None, typer.Option(help="First N pairs (HaluEval) or rows")] = None,
        validation: Annotated[
            str | None,
            typer.Option(
                help="Labelled file to calibrate the score on (HaluEval: its validation "
                "split unless 'none')"
            ),
        ] = None,
        label_column: Annotated[str, typer.Option(help="Bool label column of a file")] = "grounded",
        base_model: Annotated[str, typer.Option(help="Encoder to start from")] = "all-MiniLM-L6-v2",
        layers: Annotated[int | None, typer.Option(help="Keep the first N layers")] = None,
        max_length: Annotated[int, typer.Option(help="Encoder window (tokens)")] = 256,
        prompt_tokens: Annotated[int, typer.Option(help="Prompt tokens kept (its last)")] = 64,
        select: Annotated[str, typer.Option(help="Long contexts: all, best or evidence")] = "all",
        epochs: Annotated[int, typer.Option()] = 1,
        batch_size: Annotated[int, typer.Option()] = 16,
        learning_rate: Annotated[float, typer.Option()] = 5e-5,
        freeze_layers: Annotated[int, typer.Option(help="Frozen lower layers")] = 0,
        freeze_embeddings: Annotated[bool, typer.Option(help="Freeze the embeddings")] = False,
        pairwise_weight: Annotated[
            float, typer.Option(help="Weight of the ranking loss on pairs (parent_id)")
        ] = 0.0,
        other_contexts: Annotated[
            str | None,
            typer.Option(
                help="Also train each grounded answer against another context: random or similar"
            ),
        ] = None,
        bf16: Annotated[bool, typer.Option(help="bf16 autocast while training")] = False,
        dtype: Annotated[
            str, typer.Option(help="Inference: float32, bfloat16 or int8")
        ] = "float32",
        threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
        checkpoint_every: Annotated[
            int, typer.Option(help="Save the training state every N steps (0: never)")
        ] = 100,
        resume: Annotated[
            bool, typer.Option(help="Continue a stopped training from its checkpoint")
        ] = False,
    ) -> None:
        """Fine-tune a small cross-encoder on labelled rows and register it by name."""
        from assay.judges.distill_train import train_distilled
        from assay.judges.evaluate import load_rows

        rows, _, _ = load_rows(data, split, limit, label_column)
        held_out = None
        if validation is not None and validation != "none":
            held_out, _, _ = load_rows(validation, "validation", None, label_column)
        elif validation is None and data.startswith("halueval:"):
            held_out, _, _ = load_rows(data, "validation", None, label_column)
        path = train_distilled(
            rows,
            name,
            base_model=base_model,
            max_length=max_length,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            freeze_layers=freeze_layers,
            freeze_embeddings=freeze_embeddings,
            layers=layers,
            pairwise_weight=pairwise_weight,
            other_contexts=other_contexts,
            select=select,
            prompt_tokens=prompt_tokens,
            bf16=bf16,
            inference_dtype=dtype,
            validation=held_out,
            threads=threads,
            description=f"{data} ({split}, {len(rows)} rows)",
            log=typer.echo,
            checkpoint_every=checkpoint_every,
            resume=resume,
        )
        typer.echo(f"judge {name!r} saved in {path}; use it as DistilledJudge(judge={name!r})")

    @judge_app.command("list")
    def list_judges() -> None:
        """The trained judges and what they were trained on."""
        from assay.judges.registry_dir import judges_dir, trained_judges

        found = trained_judges()
        if not found:
            typer.echo(f"no trained judges in {judges_dir()}")
        for name, meta in found.items():
            typer.echo(f"{name}: {meta.get('description', '')} ({meta.get('base_model')})")
