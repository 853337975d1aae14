"""Run-store reads for the pages: runs, funnels, lineage, the requests a row paid for, and
training runs (tables written by the trainers, shown when present).

Training tables (written by assay/train/store.py; a training run is also a `runs` row):
- `train_runs(run_id, method, model, config, output_dir, adapter_dir, model_name, status)`
- `train_metrics(run_id, step, name, value)`: one point of a curve (`eval_*` for eval)
- `eval_results(eval_id, model, task, prompt_style, n, accuracy, stderr, prompt_tokens,
  completion_tokens, latency_s, created_at)`: shown for the run's model and its base
"""

from __future__ import annotations

import json
from typing import Any

from assay.viewer.charts import LineChart, line_chart
from assay.viewer.redact import redact
from assay.viewer.workspace import Workspace, dicts


def runs(ws: Workspace) -> list[dict[str, Any]]:
    with ws.store() as store:
        return store.runs()


def run_page(ws: Workspace, run_id: str) -> dict[str, Any]:
    """Header, funnel rows (with their top reject reasons) and totals of one run."""
    ws.run_dir(run_id)
    with ws.store() as store:
        info = store.run(run_id)
        funnel = store.funnel(run_id)
        reasons = store.reject_reasons(run_id)
    by_stage: dict[int, list[dict[str, Any]]] = {}
    for r in reasons:
        by_stage.setdefault(r["stage_index"], []).append(r)
    for row in funnel:
        row["reasons"] = by_stage.get(row["stage_index"], [])
    seconds = None
    if info["started_at"] and info["ended_at"]:
        seconds = (info["ended_at"] - info["started_at"]).total_seconds()
    totals = {
        "rows_in": funnel[0]["rows_in"] if funnel else 0,
        "rows_out": funnel[-1]["rows_out"] if funnel else 0,
        "rejected": sum(r["rows_rejected"] for r in funnel),
        "requests": sum(r["requests"] or 0 for r in funnel),
        "input_tokens": sum(r["input_tokens"] or 0 for r in funnel),
        "output_tokens": sum(r["output_tokens"] or 0 for r in funnel),
        "cost": sum(r["cost"] or 0 for r in funnel),
        "stage_seconds": sum(r["seconds"] or 0 for r in funnel),
        "wall_seconds": seconds,
    }
    config = redact(json.dumps(info.get("config") or {}, indent=2, default=str))
    return {"info": info, "funnel": funnel, "totals": totals, "config": config}


def lineage(ws: Workspace, run_id: str, row_id: str) -> list[dict[str, Any]]:
    """The chain from this row back to its source row: [{id, parent_id, stage}], newest first."""
    chain: list[dict[str, Any]] = []
    with ws.connect() as con:
        current, seen = row_id, set()
        while current not in seen and len(chain) < 64:
            seen.add(current)
            found = dicts(
                con,
                """select l.id, l.parent_id, l.stage_index, s.name as stage from lineage l
                   left join stages s on s.run_id = l.run_id and s.stage_index = l.stage_index
                   where l.run_id = ? and l.id = ? limit 1""",
                [run_id, current],
            )
            if not found:
                break
            chain.append(found[0])
            current = found[0]["parent_id"]
    return chain


def requests_for(
    ws: Workspace, run_id: str, messages_json: str | None, sample_index: int
) -> list[dict[str, Any]]:
    """The LLM requests this run logged for these prompt messages (what was paid for), with
    the stored request (redacted)."""
    if not messages_json or "llm_cache" not in ws.tables():
        return []
    with ws.connect() as con:
        rows = dicts(
            con,
            """with keys as (
                   select request_key, any_value(request) as request from llm_cache
                   -- only this run's requests are parsed (the cache holds every run's)
                   where request_key in (select request_key from request_log where run_id = ?)
                     and json_extract(request, '$.messages') = json(?)
                     and coalesce(json_extract(request, '$.sample_index')::int, 0) = ?
                   group by request_key)
               select l.request_key, l.model, l.cached, l.input_tokens, l.output_tokens,
                      l.cost, l.latency_s, l.error, l.logged_at, s.name as stage, k.request
               from request_log l join keys k using (request_key)
               left join stages s on s.run_id = l.run_id and s.stage_index = l.stage_index
               where l.run_id = ? order by l.logged_at""",
            [run_id, messages_json, sample_index, run_id],
        )
    for r in rows:
        stored = json.loads(r["request"])
        r["request"] = redact(json.dumps(stored, indent=2, ensure_ascii=False))
        r["error"] = redact(r["error"]) if r["error"] else None
    return rows


# training runs ----------------------------------------------------------------------------


KEY_METRICS = ("loss", "reward", "rewards/margins", "rewards/accuracies", "accuracy")
KEY_METRICS += ("mean_token_accuracy", "frac_reward_zero_std", "learning_rate", "grad_norm")


def training_page(ws: Workspace, run_id: str) -> dict[str, Any] | None:
    """A training run's record, one chart per metric (train and `eval_` curves together) and
    the eval table of its model against the base; None when `run_id` is not a training run."""
    tables = ws.tables()
    if "train_runs" not in tables:
        return None
    found = ws.query("select * from train_runs where run_id = ?", [run_id])
    if not found:
        return None
    info = found[0]
    info["config"] = redact(json.dumps(_json(info.get("config")), indent=2, default=str))
    charts: list[LineChart] = []
    summary: list[dict[str, Any]] = []
    if "train_metrics" in tables:
        points = ws.query(
            "select name, step, value from train_metrics where run_id = ? "
            "and value is not null and isfinite(value) order by name, step",
            [run_id],
        )
        by_name: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for p in points:
            name, split = p["name"], "train"
            if name.startswith("eval_"):
                name, split = name[len("eval_") :], "eval"
            by_name.setdefault(name, {}).setdefault(split, []).append((p["step"], p["value"]))

        # curves for what changes over steps, key metrics first; one-point metrics
        # (train_runtime, total_flos...) go in a table
        def rank(name: str) -> tuple[int, str]:
            return (KEY_METRICS.index(name) if name in KEY_METRICS else len(KEY_METRICS), name)

        for name in sorted(by_name, key=rank):
            curves = by_name[name]
            if sum(len(c) for c in curves.values()) > 1:
                charts.append(line_chart(name, curves))
            else:
                for split, pts in curves.items():
                    summary.append(
                        {"name": name if split == "train" else f"eval_{name}", "value": pts[0][1]}
                    )
    evals: list[dict[str, Any]] = []
    if "eval_results" in tables:
        models = [m for m in (info.get("model_name"), info.get("model")) if m]
        evals = ws.query(
            "select eval_id, model, task, prompt_style, n, accuracy, stderr, prompt_tokens, "
            "completion_tokens, latency_s, created_at from eval_results "
            "where model in (select unnest(?::varchar[])) order by task, prompt_style, model",
            [models],
        )
    return {"info": info, "charts": charts, "summary": summary, "evals": evals}


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
