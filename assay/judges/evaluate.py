"""Calibrate a judge on labelled rows: its metrics beside the length and overlap baselines.

    result = evaluate_on_data("GroundingJudge", "halueval:dialogue", split="test", limit=100)
    write_report(result, Path("out/"))   # report.md, metrics.json, confusion.png, scores.png

Data: `halueval:<qa|dialogue|summarization>` (both answers of each pair, labelled), or a
JSONL / Parquet / CSV file with `context`, `response`, the label column (bool: grounded)
and optionally `prompt`, `parent_id` (rows sharing a parent with one grounded and one
ungrounded answer form a pair for the pairwise metric) and `id`.
Or human step labels: the `step_labels/` folder (or a Parquet file of it) that `assay
feedback export` writes (`id`, `run_id`, `row_id`, `question`, `step_index`,
`previous_steps`, `step`, `correct`). Each labelled step is one row, labelled by `correct`
(the label column is not used): `prompt` = the question, `context` = the question and the
steps before it, `response` = the step, `parent_id` = its trace (so pairwise accuracy asks
whether a trace's correct step scores above its wrong one). A step judge (`StepJudge`, any
judge with a `steps_column`) judges each trace once, its steps rebuilt from the labels up to
the last labelled step, and a step's score is the judge's step reward (1.0 before the first
wrong step, 0.0 from it on); other judges score each step as a response to its context.
Judges: a registered LLM judge (`GroundingJudge`, `RubricJudge`, ...; built with `model`
and `params`), a trained distilled judge (`distilled:<name>` or its name), or a baseline
(`length`, `overlap`). Scores are read as P(grounded): `score >= 0.5` predicts grounded;
baselines, whose scores are not probabilities, get the cut with the best accuracy on the
training split (or, for a file, on the rows themselves, which flatters them: the report
says which).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.judges.baselines import BASELINES
from assay.judges.metrics import best_threshold, classification_metrics, pairwise_accuracy

COLUMNS = {"context": "context", "prompt": "prompt", "response": "response"}
STEP_LABELS = ("row_id", "step_index", "previous_steps", "step", "correct", "question")


@dataclass
class MethodResult:
    name: str
    scores: list[float | None]
    seconds: float
    cost: float
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class EvalResult:
    data: str
    split: str
    rows: list[dict[str, Any]]
    methods: list[MethodResult]
    card: str = ""


def load_rows(
    data: str, split: str = "test", limit: int | None = None, label_column: str = "grounded"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, str]:
    """(rows to evaluate, training rows for baseline cuts or None, a dataset card)."""
    if data.startswith("halueval:"):
        from assay.datasets.halueval import as_responses, dataset_card, load_halueval

        subset = data.split(":", 1)[1]
        rows = as_responses(load_halueval(subset, split, limit))  # type: ignore[arg-type]
        train = as_responses(load_halueval(subset, "train", 2000))  # type: ignore[arg-type]
        return rows, train, dataset_card(subset, split)  # type: ignore[arg-type]
    rows = read_table(Path(data))
    if rows and all(c in rows[0] for c in STEP_LABELS):
        steps = step_label_rows(rows)
        card = f"Human step labels from `assay feedback export` ({data}): {len(steps)} steps."
        return (steps[:limit] if limit else steps), None, card
    for i, row in enumerate(rows):
        for column in ("context", "response", label_column):
            if row.get(column) is None:
                raise AssayError(f"{data}: row {i} (id {row.get('id')!r}) has no {column!r}")
        row["grounded"] = bool(row[label_column])
        row.setdefault("prompt", "")
        row.setdefault("id", str(i))
    return (rows[:limit] if limit else rows), None, ""


def step_label_rows(labels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows to evaluate from a step-label export: one per labelled step (see the module)."""
    out = []
    for i, label in enumerate(labels):
        if label.get("correct") is None or label.get("step") is None:
            raise AssayError(f"step label {i} (id {label.get('id')!r}) has no 'correct' or 'step'")
        previous = [str(s) for s in label.get("previous_steps") or []]
        question = str(label.get("question") or "")
        out.append(
            {
                "id": str(label.get("id") or i),
                "parent_id": f"{label.get('run_id')}/{label['row_id']}",
                "prompt": question,
                "context": "\n".join([question, *previous]),
                "response": str(label["step"]),
                "grounded": bool(label["correct"]),
                "question": question,
                "step_index": int(label["step_index"]),
                "previous_steps": previous,
            }
        )
    return out


def _step_scores(
    cls: Any, rows: list[dict[str, Any]], model: str, params: dict[str, Any] | None
) -> tuple[list[float | None], float]:
    """A step judge on the traces rebuilt from step-label rows: each step's reward."""
    import pyarrow as pa

    from assay.judges.llm_judge import run_sync

    traces: dict[str, dict[str, Any]] = {}
    for row in rows:
        trace = traces.setdefault(row["parent_id"], {"question": row["question"], "steps": {}})
        for k, text in enumerate(row["previous_steps"]):
            trace["steps"].setdefault(k, text)
        trace["steps"][row["step_index"]] = row["response"]
    ids = {parent: f"t{i}" for i, parent in enumerate(traces)}
    table = pa.table(
        {
            "id": list(ids.values()),
            "question": [t["question"] for t in traces.values()],
            "steps": [
                [
                    {"step_id": f"{ids[p]}#{k}", "text": t["steps"].get(k, "")}
                    for k in range(max(t["steps"]) + 1)
                ]
                for p, t in traces.items()
            ],
        }
    )
    stage = cls(
        **{"model": model, "question_column": "question", **(params or {}), "steps_column": "steps"}
    )
    out = run_sync(stage.aprocess(table))
    if not isinstance(out, pa.Table):
        raise AssayError(f"{cls.__name__} with a threshold drops traces: evaluate it without one")
    prefix = stage.output_column  # type: ignore[attr-defined]
    rewards = dict(zip(out["id"].to_pylist(), out[f"{prefix}_rewards"].to_pylist(), strict=True))
    cost = sum(c or 0.0 for c in out[f"{prefix}_cost"].to_pylist())
    scores: list[float | None] = []
    for row in rows:
        got = rewards.get(ids[row["parent_id"]]) or []
        k = row["step_index"]
        scores.append(float(got[k]) if k < len(got) and got[k] is not None else None)
    return scores, cost


def read_table(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():  # an assay export folder (data/*.parquet) or a folder of shards
        import pyarrow.parquet as pq

        shards = sorted((path / "data").glob("*.parquet")) or sorted(path.glob("*.parquet"))
        if not shards:
            raise AssayError(f"{path}: no data/*.parquet or *.parquet in this folder")
        return [r for shard in shards for r in pq.read_table(shard).to_pylist()]
    if not path.exists():
        raise AssayError(f"no data file {path}")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path).to_pylist()
    raise AssayError(f"{path}: use a .jsonl, .parquet or .csv file")


def score_with(
    judge: str, rows: list[dict[str, Any]], model: str, params: dict[str, Any] | None = None
) -> tuple[list[float | None], float, float]:
    """(scores, seconds, cost) of one judge on the rows."""
    started = time.monotonic()
    if judge in BASELINES:
        fn = BASELINES[judge]
        scores: list[float | None] = [fn(r["response"], r["context"]) for r in rows]
        return scores, time.monotonic() - started, 0.0
    import pyarrow as pa

    from assay.curate.registry import get_stage, stages
    from assay.judges.registry_dir import trained_judges

    name = judge.removeprefix("distilled:")
    if judge.startswith("distilled:") or name in trained_judges():
        from assay.judges.distilled import DistilledJudge

        distilled = DistilledJudge(judge=name, response_column="response", prompt_column="prompt")
        distilled.load()
        started = time.monotonic()  # loading the judge aside, like an LLM's start-up
        judgements = distilled.scores(rows)
        return [j.score for j in judgements], time.monotonic() - started, 0.0
    if judge not in stages():
        known = ", ".join([*BASELINES, "distilled:<name>", *stages()])
        raise AssayError(f"unknown judge {judge!r}; use one of {known}")
    cls = get_stage(judge)
    if "steps_column" in cls.model_fields and rows and "step_index" in rows[0]:
        scores, cost = _step_scores(cls, rows, model, params)
        return scores, time.monotonic() - started, cost
    kwargs: dict[str, Any] = {"model": model}
    for key in ("context_column", "response_column", "prompt_column"):
        if key in cls.model_fields:
            kwargs[key] = COLUMNS[key.removesuffix("_column")]
    kwargs.update(params or {})
    stage = cls(**kwargs)
    table = pa.Table.from_pylist(
        [{"id": r["id"], **{c: r.get(c) or "" for c in COLUMNS}} for r in rows]
    )
    from assay.judges.llm_judge import run_sync

    out = run_sync(stage.aprocess(table))
    prefix = stage.output_column  # type: ignore[attr-defined]
    scores = out[f"{prefix}_score"].to_pylist()
    cost = sum(c or 0.0 for c in out[f"{prefix}_cost"].to_pylist())
    return scores, time.monotonic() - started, cost


def pairs_of(rows: list[dict[str, Any]], scores: list[float | None]) -> tuple[list, list]:
    """Scores of (grounded, ungrounded) answers of the same parent, for pairwise accuracy."""
    by_parent: dict[Any, dict[bool, float | None]] = {}
    for row, score in zip(rows, scores, strict=True):
        if row.get("parent_id") is not None:
            by_parent.setdefault(row["parent_id"], {})[bool(row["grounded"])] = score
    good = [v[True] for v in by_parent.values() if True in v and False in v]
    bad = [v[False] for v in by_parent.values() if True in v and False in v]
    return good, bad


def evaluate_on_data(
    judge: str,
    data: str,
    split: str = "test",
    limit: int | None = None,
    model: str = "local/smollm2-135m",
    params: dict[str, Any] | None = None,
    label_column: str = "grounded",
) -> EvalResult:
    """The judge and both baselines on the same rows, with every metric."""
    rows, train, card = load_rows(data, split, limit, label_column)
    if not rows:
        raise AssayError(f"{data} ({split}) has no rows")
    labels = [bool(r["grounded"]) for r in rows]
    methods = []
    for name in [judge, *[b for b in BASELINES if b != judge]]:
        scores, seconds, cost = score_with(name, rows, model, params)
        result = MethodResult(name, scores, seconds, cost)
        cut = 0.5
        if name in BASELINES:
            fit_rows = train if train is not None else rows
            fn = BASELINES[name]
            fit = [fn(r["response"], r["context"]) for r in fit_rows]
            cut = best_threshold([bool(r["grounded"]) for r in fit_rows], fit)
            where = "the train split" if train is not None else "these rows (optimistic)"
            result.note = f"cut {cut:.3g} fitted on {where}"
        result.metrics = classification_metrics(labels, scores, cut)
        good, bad = pairs_of(rows, scores)
        pairwise, pairwise_se = pairwise_accuracy(good, bad)
        result.metrics.update(
            pairwise=pairwise,
            pairwise_se=pairwise_se,
            pairs=len(good),
            seconds_per_1000=1000 * seconds / len(rows),
            rows_per_s=len(rows) / seconds if seconds > 0 else float("inf"),
            cost_per_1000=1000 * cost / len(rows),
        )
        methods.append(result)
    return EvalResult(data, split, rows, methods, card)


def write_report(result: EvalResult, out: Path) -> Path:
    """report.md, metrics.json and two PNGs (confusion matrix, scores per label) in `out`."""
    from assay.judges.eval_report import render

    return render(result, out)
