"""`assay ...`: thin verbs that parse arguments and call the library."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from assay.curate.errors import AssayError
from assay.curate.pipeline import DEFAULT_WORKSPACE, Pipeline
from assay.curate.recipes import load_job, load_recipe, parse_recipe
from assay.curate.registry import stages as registered_stages
from assay.curate.report import funnel_table, usage_line, write_report
from assay.curate.store import RunStore

app = typer.Typer(
    help="assay: LLM calls -> curated training data -> better small models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# logs and `make demo` output are not terminals: Rich would squeeze tables into 80 columns
console = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True)

Workspace = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace directory.")]


@app.command()
def run(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML file.")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue this run id.")] = None,
    source: Annotated[str | None, typer.Option(help="Override the recipe's source.")] = None,
    workspace: Workspace = Path(DEFAULT_WORKSPACE),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ignore stored responses.")] = False,
    no_search_index: Annotated[
        bool,
        typer.Option("--no-search-index", help="Write no viewer search index at the end."),
    ] = False,
    profile: Annotated[
        str | None, typer.Option(help="A job recipe's profile (e.g. quick, full).")
    ] = None,
    teacher: Annotated[str | None, typer.Option(help="A job recipe's teacher model.")] = None,
    judge: Annotated[
        str | None,
        typer.Option(help="A job recipe's judge model (the intern job's reasoning judge)."),
    ] = None,
) -> None:
    """Run a recipe (or resume an interrupted run) and print its funnel."""
    job = load_job(recipe) if recipe is not None and resume is None else None
    if job is not None:
        module, config = job
        given = (("profile", profile), ("teacher", teacher), ("judge", judge))
        config = {**config, **{k: v for k, v in given if v}}
        if no_search_index:
            config["search_index"] = False
        report = importlib.import_module(module).run_job(
            config, workspace, "quiet" if quiet else "auto"
        )
        console.print(f"report: {report}")
        console.print(f"html report: {Path(report).with_suffix('.html')}")
        return
    pipeline, src = _pipeline_for(recipe, resume, source, workspace)
    result = pipeline.run(
        src,
        workspace=workspace,
        resume=resume,
        progress="quiet" if quiet else "auto",
        no_cache=no_cache,
        search_index=False if no_search_index else None,
    )
    with RunStore(workspace) as store:
        report = write_report(store, result.run_id)
        console.print(funnel_table(store, result.run_id))
        usage = usage_line(store, result.run_id)
        if usage:
            console.print(usage)
    console.print(f"run {result.run_id}: output {result.output_dir}")
    console.print(f"report: {report}")


def _pipeline_for(
    recipe: Path | None, resume: str | None, source: str | None, workspace: Path
) -> tuple[Pipeline, str | None]:
    if recipe is not None:
        pipeline = load_recipe(recipe)
        return pipeline, source or pipeline.source
    if resume is None:
        raise AssayError("give a recipe file, or --resume RUN to continue a run")
    with RunStore(workspace) as store:
        stored = store.run(resume)
    if not stored["recipe"]:
        raise AssayError(
            f"run {resume} was started from Python, not a recipe: resume it with "
            "Pipeline.run(source, resume=...)"
        )
    pipeline = parse_recipe(stored["recipe"], origin=f"run {resume}")
    return pipeline, source or stored["config"]["source"].get("path")


@app.command()
def runs(workspace: Workspace = Path(DEFAULT_WORKSPACE)) -> None:
    """List the workspace's runs, newest first."""
    with RunStore(workspace) as store:
        rows = store.runs()
    table = Table("run", "name", "status", "started", "ended", "rows out")
    for r in rows:
        table.add_row(
            r["run_id"],
            r["name"],
            r["status"],
            str(r["started_at"])[:19],
            str(r["ended_at"] or "")[:19],
            f"{r['rows_out']:,}",
        )
    console.print(table)


@app.command()
def show(
    run_id: Annotated[str | None, typer.Argument(help="Run id (default: the newest).")] = None,
    workspace: Workspace = Path(DEFAULT_WORKSPACE),
) -> None:
    """Print a run's stage funnel: rows in, out, rejected by reason, time, LLM usage."""
    with RunStore(workspace) as store:
        if run_id is None:
            all_runs = store.runs()
            if not all_runs:
                raise AssayError(f"no runs in {workspace}")
            run_id = all_runs[0]["run_id"]
        info = store.run(run_id)
        console.print(
            f"[bold]{escape(info['name'])}[/] {run_id} {escape('[' + info['status'] + ']')} "
            f"code {info['code_version']}"
        )
        if info["error"]:
            console.print(f"[red]error:[/] {escape(str(info['error']))}")
        for line in _plugin_summaries(store, run_id):
            console.print(escape(line))
        console.print(funnel_table(store, run_id))
        usage = usage_line(store, run_id)
        if usage:
            console.print(usage)
        console.print(f"output: {Path(info['run_dir']) / 'output'}")


@app.command("stages")
def list_stages() -> None:
    """List the registered stages with their docstrings."""
    for name, cls in registered_stages().items():
        doc = inspect.cleandoc(cls.__doc__ or "").strip()
        console.print(f"[bold]{escape(name)}[/] ({escape(cls.__module__)})")
        params = ", ".join(f"{k}={v.default!r}" for k, v in cls.model_fields.items())
        console.print(f"  parameters: {params or 'none'}")
        for line in doc.splitlines():
            console.print(f"  {line}", markup=False)
        console.print()


cache_app = typer.Typer(help="The request cache (stored LLM responses).", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("clear")
def cache_clear(
    model: Annotated[str | None, typer.Option(help="Only this model's responses.")] = None,
    workspace: Workspace = Path(DEFAULT_WORKSPACE),
) -> None:
    """Delete stored responses (all, or one model's); run logs are kept."""
    from assay.curate.llm.cache import clear_cache

    deleted = clear_cache(workspace, model)
    console.print(f"deleted {deleted:,} stored responses" + (f" of {model}" if model else ""))


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Base model alias or path.")] = "smollm2-135m",
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR of a LoRA adapter; repeatable.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key to require.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 32,
) -> None:
    """Serve a local model and its LoRA adapters over an OpenAI-compatible HTTP API."""
    import os

    from assay.models.serve import serve as run_server

    adapters = {}
    for spec in adapter or []:
        name, sep, directory = spec.partition("=")
        if not sep or not name or not directory:
            raise AssayError(f"--adapter takes NAME=DIR, got {spec!r}")
        adapters[name] = directory
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise AssayError(f"environment variable {api_key_env} is not set")
    run_server(
        model,
        adapters or None,
        host=host,
        port=port,
        api_key=api_key,
        max_batch_size=max_batch_size,
    )


# Verbs that live beside the parts they drive (judges, trainers, viewer): each module defines
# `register(app)` and keeps heavy imports (torch, trl) inside its commands, so `assay --help`
# stays fast; it may define `run_summary(store, run_id) -> list[str] | None` for `assay show`.
# A module that is not there (an optional part) adds no verbs.
COMMAND_MODULES = ("assay.judges.cli", "assay.train.cli", "assay.viewer.cli", "assay.datasets.cli")


def _register_plugins() -> None:
    for name in COMMAND_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            importlib.import_module(name).register(app)


_register_plugins()


def _plugin_summaries(store: RunStore, run_id: str) -> list[str]:
    """Lines a plug-in adds to `assay show` (e.g. a training run's rows, loss, adapter)."""
    lines: list[str] = []
    for name in COMMAND_MODULES:
        summary = getattr(sys.modules.get(name), "run_summary", None)
        if summary is not None:
            lines += summary(store, run_id) or []
    return lines


def main() -> None:
    try:
        app()
    except AssayError as exc:
        # exception text quotes user input and model output: never read it as Rich markup
        err.print(f"[red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
