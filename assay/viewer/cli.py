"""`assay view` (the local web viewer) and `assay feedback export` (step feedback to data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from assay.curate.errors import AssayError

feedback_app = typer.Typer(help="Step feedback given in `assay view`.", no_args_is_help=True)


def view(
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Workspace directory.")
    ] = Path(".assay"),
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless --token).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(help="Access token every client must send; required off loopback."),
    ] = None,
) -> None:
    """Browse the workspace's runs, datasets, rejects, trajectories and training runs in a
    local web app, and mark reasoning steps correct or wrong."""
    import uvicorn

    from assay.viewer.app import create_app
    from assay.viewer.security import is_loopback

    loopback = is_loopback(host)
    if not loopback and not token:
        raise AssayError(
            f"binding {host} exposes the workspace beyond this machine: give --token SECRET "
            "(clients then open the URL with ?token=SECRET once)"
        )
    if not (workspace / "assay.duckdb").exists():
        raise AssayError(f"no run store at {workspace / 'assay.duckdb'}: run a recipe first")
    app = create_app(workspace, token=token, loopback_only=loopback)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + ("?token=..." if token else "")
    typer.echo(f"assay view: {url} (workspace {workspace.resolve()}); Ctrl-C stops it")
    uvicorn.run(app, host=host, port=port, log_level="warning")


@feedback_app.command("export")
def export(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write sft/, dpo/, step_labels/.")
    ],
    workspace: Annotated[
        Path, typer.Option("--workspace", "-w", help="Workspace directory.")
    ] = Path(".assay"),
    run: Annotated[str | None, typer.Option(help="Only this run's feedback.")] = None,
    system_prompt: Annotated[
        str | None, typer.Option(help="A system turn to put before each question.")
    ] = None,
    no_hf: Annotated[
        bool, typer.Option("--no-hf", help="Skip the datasets save_to_disk copy.")
    ] = False,
) -> None:
    """Turn step feedback into SFT examples, DPO pairs and step labels (TRL formats)."""
    from assay.viewer.export import export_feedback

    result = export_feedback(
        workspace, out, run_id=run, system_prompt=system_prompt, save_hf=not no_hf
    )
    typer.echo(f"{result.steps} marked steps ({result.marks} marks) on {result.traces} traces")
    for name, paths in (
        ("sft", result.sft),
        ("dpo", result.dpo),
        ("step_labels", result.step_labels),
    ):
        if paths is None:
            typer.echo(
                f"{name}: nothing (needs a wrong step with a correction, or all steps correct)"
            )
        else:
            typer.echo(f"{name}: {paths.rows} rows in {paths.root}")


def register(app: typer.Typer) -> None:
    app.command("view")(view)
    app.add_typer(feedback_app, name="feedback")
