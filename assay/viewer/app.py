"""The viewer's pages: FastAPI routes rendering Jinja2 templates (autoescaped, redacted).

from assay.viewer.app import create_app
app = create_app(".assay")          # then: uvicorn.run(app, host="127.0.0.1", port=8765)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from assay.viewer import feedback, runinfo, search
from assay.viewer.charts import funnel_bars
from assay.viewer.queries import OPS, ColumnFilter, ParquetTable, display, warm
from assay.viewer.redact import add_secret, redact, redact_value
from assay.viewer.rows import interpret, pretty, trajectory
from assay.viewer.security import AccessMiddleware
from assay.viewer.workspace import NotFound, ViewerError, Workspace

HERE = Path(__file__).parent
AUTHOR_COOKIE = "assay_author"
PAGE_SIZES = (20, 50, 100)


def _finalize(value: Any) -> Any:
    # every {{ value }} passes here before escaping: secrets never reach a page
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return redact(value)
    return "" if value is None else value


# what a person scans first in a listing; long list columns are for the row page
FIRST = ("id", "question", "prompt", "text", "final_answer", "correct", "pass_rate", "reward")
FIRST += ("turns", "finish", "_reason", "generation", "answer")
HEAVY = ("steps", "messages", "tools", "episode")


def default_columns(schema: dict[str, str], limit: int = 8) -> list[str]:
    first = [c for c in FIRST if c in schema]
    scores = [c for c in schema if c.endswith("_score") and c not in first]
    rest = [c for c in schema if c not in first and c not in scores and c not in HEAVY]
    rest = [c for c in rest if not c.startswith("generation_")]
    return (first + scores + rest)[:limit]


def author_of(request: Request) -> str:
    return unquote(request.cookies.get(AUTHOR_COOKIE, ""))[: feedback.MAX_AUTHOR]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        finalize=_finalize,
    )
    env.filters["cell"] = display
    env.filters["pretty"] = pretty
    env.globals["urlencode"] = urlencode
    return env


def create_app(
    workspace: str | Path = ".assay", token: str | None = None, loopback_only: bool = True
) -> FastAPI:
    """The viewer for one workspace. `token`: required from every client when set."""
    ws = Workspace(workspace)
    env = _environment()
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)  # compiled now, not on the first visit (~50 ms each)
    warm()  # DuckDB opened now, not on the first dataset page
    add_secret(token)
    app = FastAPI(title="assay viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessMiddleware, token=token, loopback_only=loopback_only)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.update(
            author=author_of(request),
            path=request.url.path,
            workspace=str(ws.root),
            query=str(request.url.query),
        )
        return HTMLResponse(env.get_template(name).render(**context), status_code=status)

    @app.exception_handler(ViewerError)
    async def viewer_error(request: Request, exc: ViewerError) -> HTMLResponse:
        return render(request, "error.html", status=exc.status, message=str(exc))

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> HTMLResponse:
        with ws.connect():  # one open of the store per page
            runs, counts = runinfo.runs(ws), feedback.counts_by_run(ws)
        return render(request, "runs.html", runs=runs, feedback=counts)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        with ws.connect():
            page = runinfo.run_page(ws, run_id)
            training = runinfo.training_page(ws, run_id)
        return render(
            request,
            "run.html",
            run_id=run_id,
            bars=funnel_bars(page["funnel"]),
            reject_stages=list(ws.reject_stages(run_id)),
            training=training,
            **page,
        )

    def output_table(run_id: str) -> ParquetTable:
        # with the index the pipeline wrote at the end of the run (used only if current)
        files = ws.output_files(run_id)
        return ParquetTable(files, index_file=search.index_path(ws.run_dir(run_id)))

    def browse(request: Request, run_id: str, table: ParquetTable, source: str) -> HTMLResponse:
        started = time.perf_counter()
        params = request.query_params
        filters = [
            ColumnFilter(c, o, v)
            for c, o, v in zip(
                params.getlist("col"), params.getlist("op"), params.getlist("val"), strict=False
            )
            if c
        ]
        size = int(params.get("size", 50)) if params.get("size", "50").isdigit() else 50
        size = size if size in PAGE_SIZES else 50
        page_no = max(1, int(params["page"])) if params.get("page", "").isdigit() else 1
        schema = table.schema()
        wanted = [c for c in params.getlist("show") if c in schema]
        default = default_columns(schema)
        page = table.page(
            filters,
            params.get("q", "").strip(),
            offset=(page_no - 1) * size,
            limit=size,
            columns=wanted or default,
            sort=params.get("sort") or None,
            descending=params.get("desc") == "1",
        )
        rows = [redact_value(r) for r in page.rows]
        keep = [(k, v) for k, v in params.multi_items() if k != "page"]
        return render(
            request,
            "dataset.html",
            run_id=run_id,
            source=source,
            page=page,
            rows=rows,
            page_no=page_no,
            pages=max(1, -(-page.total // size)),
            filters=filters or [ColumnFilter("", "=", "")],
            ops=OPS,
            search=params.get("q", ""),
            sort=params.get("sort", ""),
            desc=params.get("desc") == "1",
            size=size,
            sizes=PAGE_SIZES,
            keep=urlencode(keep),
            trajectories="episode" in schema and "messages" in schema,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )

    @app.get("/runs/{run_id}/data", response_class=HTMLResponse)
    def dataset_page(request: Request, run_id: str) -> HTMLResponse:
        return browse(request, run_id, output_table(run_id), "output")

    @app.get("/runs/{run_id}/rejects", response_class=HTMLResponse)
    def rejects_index(request: Request, run_id: str) -> HTMLResponse:
        page = runinfo.run_page(ws, run_id)
        stages = ws.reject_stages(run_id)
        return render(request, "rejects.html", run_id=run_id, stages=stages, **page)

    @app.get("/runs/{run_id}/rejects/{stage}", response_class=HTMLResponse)
    def rejects_page(request: Request, run_id: str, stage: str) -> HTMLResponse:
        stages = ws.reject_stages(run_id)
        if stage not in stages:  # only folder names the run has, never a path from the URL
            raise NotFound(f"run {run_id} has no rejects from {stage!r}")
        return browse(request, run_id, ParquetTable(stages[stage]), stage)

    def find_row(run_id: str, row_id: str, source: str) -> dict[str, Any]:
        if source == "output":
            files = ws.output_files(run_id)
        else:
            files = ws.reject_stages(run_id).get(source)
            if files is None:
                raise NotFound(f"run {run_id} has no rejects from {source!r}")
        row = ParquetTable(files).row(row_id) if files else None
        if row is None:
            raise NotFound(f"no row {row_id!r} in run {run_id} ({source})")
        return row

    @app.get("/runs/{run_id}/row", response_class=HTMLResponse)
    def row_page(request: Request, run_id: str, id: str, src: str = "output") -> HTMLResponse:
        row = find_row(run_id, id, src)
        view = interpret(row)
        messages_json = (
            row.get(f"{view.response_column}_messages") if view.response_column else None
        )
        sample = row.get("sample_index") if isinstance(row.get("sample_index"), int) else 0
        with ws.connect():
            marks = feedback.feedback_for_row(ws, run_id, id)
            chain = runinfo.lineage(ws, run_id, id)
            paid = runinfo.requests_for(ws, run_id, messages_json, sample)
        current = {}
        for m in marks:
            current[m["step_id"]] = m
        return render(
            request,
            "row.html",
            run_id=run_id,
            row_id=id,
            source=src,
            view=view,
            row=redact_value(row),
            others=[
                (k, v) for k, v in redact_value(row).items() if k not in view.shown and k != "id"
            ],
            lineage=chain,
            requests=paid,
            marks=marks,
            current=current,
        )

    @app.get("/runs/{run_id}/trajectory", response_class=HTMLResponse)
    def trajectory_page(
        request: Request, run_id: str, id: str, src: str = "output"
    ) -> HTMLResponse:
        row = find_row(run_id, id, src)
        if "messages" not in row or "episode" not in row:
            raise ViewerError(f"row {id!r} is not a tool trajectory (no messages/episode columns)")
        return render(
            request,
            "trajectory.html",
            run_id=run_id,
            row_id=id,
            source=src,
            t=trajectory(redact_value(row)),
        )

    async def form(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    @app.post("/runs/{run_id}/feedback")
    async def add_feedback(request: Request, run_id: str) -> Response:
        data = await form(request)
        row_id = data.get("row_id", "")
        row = find_row(run_id, row_id, "output")
        steps = {s["step_id"] for s in interpret(row).steps}
        step_id = data.get("step_id", "")
        if step_id not in steps:
            raise ViewerError(f"row {row_id!r} has no step {step_id!r}")
        author = data.get("author") or author_of(request)
        feedback.add_feedback(
            ws, run_id, row_id, step_id, data.get("label", ""), author, data.get("correction")
        )
        target = f"/runs/{run_id}/row?{urlencode({'id': row_id})}#{step_id}"
        return RedirectResponse(target, status_code=303)

    @app.post("/author")
    async def set_author(request: Request) -> Response:
        data = await form(request)
        name = data.get("author", "").strip()[: feedback.MAX_AUTHOR]
        back = data.get("back", "/")
        back = back if back.startswith("/") and not back.startswith("//") else "/"
        response = RedirectResponse(back, status_code=303)
        response.set_cookie(AUTHOR_COOKIE, quote(name), samesite="strict")
        return response

    return app
