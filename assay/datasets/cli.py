"""`assay export-data RUN_ID --format ... --out DIR`: a run's output in a TRL format, with its card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("export-data")
    def export(
        run_id: Annotated[str, typer.Argument(help="The run to export (see `assay runs`)")],
        out: Annotated[Path, typer.Option(help="Folder for data/, README.md and hf/")],
        format: Annotated[
            str, typer.Option(help="messages | prompt_completion | preference")
        ] = "messages",
        workspace: Annotated[Path, typer.Option("--workspace", "-w")] = Path(".assay"),
        system_prompt: Annotated[
            str | None, typer.Option(help="System turn put before each prompt")
        ] = None,
        style: Annotated[
            str, typer.Option(help="Trace turn: think | answer_line | answer_only")
        ] = "think",
        plain: Annotated[
            bool, typer.Option(help="prompt/completion as strings, not messages")
        ] = False,
        pairs: Annotated[int, typer.Option(help="Preference pairs per problem")] = 1,
        no_hf: Annotated[bool, typer.Option(help="Skip the HF datasets copy (hf/)")] = False,
    ) -> None:
        """Export a run's curated rows for TRL (SFT messages or prompt/completion, DPO pairs)."""
        from assay.datasets.export import FORMATS, ExportError
        from assay.datasets.export_run import export_run

        if format not in FORMATS:
            raise ExportError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        paths = export_run(
            run_id,
            out,
            format,  # type: ignore[arg-type]
            workspace=workspace,
            system_prompt=system_prompt,
            style=style,  # type: ignore[arg-type]
            conversational=not plain,
            pairs_per_problem=pairs,
            save_hf=not no_hf,
        )
        typer.echo(f"{paths.rows} rows -> {paths.parquet}")
        typer.echo(f"card: {paths.card}")
        if paths.hf is not None:
            typer.echo(f"HF dataset: {paths.hf} (datasets.load_from_disk)")
