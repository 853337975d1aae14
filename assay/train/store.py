"""Training and evaluation records in the workspace run store (`.assay/assay.duckdb`).

A training run is a row in the store's `runs` table (so `assay runs` lists it) plus:

- `train_runs`: run_id, method, model, config (JSON), output_dir, adapter_dir, model_name
  (the registered `base+name`), status;
- `train_rows`: the exact dataset rows it saw: run_id, split ('train' | 'eval'), position,
  row_id;
- `train_metrics`: run_id, step, name, value (every logged metric: loss, reward, ...);
- `eval_results`: one row per (model, task) of an `assay eval` call.

`training_summary(store, run_id)` returns the lines `assay show` prints for a training run.
"""

from __future__ import annotations

import json
import math
from typing import Any

from assay.curate.store import RunStore

SCHEMA = """
create table if not exists train_runs (
    run_id varchar primary key, method varchar, model varchar, config json,
    output_dir varchar, adapter_dir varchar, model_name varchar, status varchar);
create table if not exists train_rows (
    run_id varchar, split varchar, position integer, row_id varchar);
create table if not exists train_metrics (
    run_id varchar, step integer, name varchar, value double);
create table if not exists eval_results (
    eval_id varchar, model varchar, task varchar, prompt_style varchar, n integer,
    accuracy double, stderr double, prompt_tokens double, completion_tokens double,
    latency_s double, created_at timestamp default current_timestamp);
"""


def ensure_tables(store: RunStore) -> None:
    store.con.execute(SCHEMA)


def start_run(
    store: RunStore,
    method: str,
    model: str,
    config: dict[str, Any],
    output_dir: str,
    splits: dict[str, list[str]],
) -> str:
    """Create the run and record its config and the ids of the rows of each split."""
    ensure_tables(store)
    run_id = store.new_run(f"train-{method}", None, config)
    store.con.execute(
        "insert into train_runs values (?, ?, ?, ?, ?, null, null, 'running')",
        [run_id, method, model, json.dumps(config, default=str), output_dir],
    )
    for split, ids in splits.items():
        if ids:
            store.con.executemany(
                "insert into train_rows values (?, ?, ?, ?)",
                [[run_id, split, k, i] for k, i in enumerate(ids)],
            )
    return run_id


def log_metrics(store: RunStore, run_id: str, step: int, metrics: dict[str, Any]) -> None:
    rows = [
        [run_id, step, k, float(v)]
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if rows:
        store.con.executemany("insert into train_metrics values (?, ?, ?, ?)", rows)


def finish_run(
    store: RunStore,
    run_id: str,
    status: str,
    adapter_dir: str | None = None,
    model_name: str | None = None,
    error: str | None = None,
) -> None:
    store.con.execute(
        "update train_runs set status = ?, adapter_dir = ?, model_name = ? where run_id = ?",
        [status, adapter_dir, model_name, run_id],
    )
    store.set_status(run_id, status, error)


def metrics(store: RunStore, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of a run, by step."""
    ensure_tables(store)
    return store.con.execute(
        "select step, value from train_metrics where run_id = ? and name = ? order by step",
        [run_id, name],
    ).fetchall()


def training_run(store: RunStore, run_id: str) -> dict[str, Any] | None:
    ensure_tables(store)
    rows = store._dicts("select * from train_runs where run_id = ?", [run_id])
    return rows[0] if rows else None


def training_summary(store: RunStore, run_id: str) -> list[str] | None:
    """Lines for `assay show <run>` when the run is a training run, else None."""
    info = training_run(store, run_id)
    if info is None:
        return None
    counts = dict(
        store.con.execute(
            "select split, count(*) from train_rows where run_id = ? group by split", [run_id]
        ).fetchall()
    )
    names = [
        r[0]
        for r in store.con.execute(
            "select distinct name from train_metrics where run_id = ? order by name", [run_id]
        ).fetchall()
    ]
    lines = [
        f"training: {info['method']} on {info['model']} [{info['status']}]",
        f"rows: {counts.get('train', 0)} train, {counts.get('eval', 0)} eval",
        f"adapter: {info['adapter_dir'] or '-'}  registered as: {info['model_name'] or '-'}",
    ]
    for name in ("loss", "eval_loss", "reward", "frac_reward_zero_std"):
        if name in names:
            series = metrics(store, run_id, name)
            lines.append(
                f"{name}: {series[0][1]:.4g} (step {series[0][0]}) -> "
                f"{series[-1][1]:.4g} (step {series[-1][0]}), {len(series)} points"
            )
    return lines


def save_eval(store: RunStore, eval_id: str, results: list[dict[str, Any]]) -> None:
    ensure_tables(store)
    store.con.executemany(
        "insert into eval_results (eval_id, model, task, prompt_style, n, accuracy, stderr, "
        "prompt_tokens, completion_tokens, latency_s) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                eval_id,
                r["model"],
                r["task"],
                r["prompt_style"],
                r["n"],
                r["accuracy"],
                r["stderr"],
                r["prompt_tokens"],
                r["completion_tokens"],
                r["latency_s"],
            ]
            for r in results
        ],
    )
