"""The intern job's report: the side-by-side table, the goals, the funnel, plots, examples.

Written as `report.md` and `report.html` into the curation run's folder
(`.assay/runs/<run_id>/`), with the training report (loss curves, accuracy bars) beside it
under `training/`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from assay.curate.pipeline import RunResult


def _accuracy(results: list[dict[str, Any]], model: str, task: str) -> float | None:
    for r in results:
        if r["model"] == model and r["task"] == task:
            return r["accuracy"]
    return None


def _tokens(results: list[dict[str, Any]], model: str, task: str) -> float | None:
    for r in results:
        if r["model"] == model and r["task"] == task:
            return r["prompt_tokens"]
    return None


def goal_lines(results: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, each with the measured numbers and whether it was met."""
    acc = {m: _accuracy(results, m, "intern-sql") for m in ("base", "teacher", "student")}
    acc["uncurated"] = _accuracy(results, "uncurated student", "intern-sql")
    t_teacher = _tokens(results, "teacher", "intern-sql") or 0.0
    t_student = _tokens(results, "student", "intern-sql") or 1.0
    if any(v is None for v in acc.values()):
        return ["(evaluation incomplete: goals not checked)"]
    ratio = t_teacher / t_student
    checks = [
        (
            "student (short prompt) >= teacher (long prompt) on held-out questions",
            acc["student"] >= acc["teacher"],
            f"{acc['student']:.1%} vs {acc['teacher']:.1%}",
        ),
        ("student uses >= 5x fewer prompt tokens", ratio >= 5, f"{ratio:.1f}x fewer"),
        (
            "student >= base + 30 points",
            acc["student"] >= acc["base"] + 0.30,
            f"{acc['student']:.1%} vs base {acc['base']:.1%}",
        ),
        (
            "curated student >= uncurated student + 10 points",
            acc["student"] >= acc["uncurated"] + 0.10,
            f"{acc['student']:.1%} vs {acc['uncurated']:.1%}",
        ),
    ]
    return [f"- [{'x' if ok else ' '}] {text}: {numbers}" for text, ok, numbers in checks]


def _examples(
    answers: dict[tuple[str, str], list[dict[str, Any]]], train_rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Five held-out questions the student gets right that the base model did not, five it
    still gets wrong; each with the training sample of the same template it learned from."""
    base = {r["id"]: r["correct"] for r in answers.get(("base", "intern-sql"), [])}
    student = answers.get(("student", "intern-sql"), [])
    by_template: dict[str, dict[str, Any]] = {}
    for row in train_rows:
        by_template.setdefault(row["template"], row)
    right = [r for r in student if r["correct"] and not base.get(r["id"], False)][:5]
    wrong = [r for r in student if not r["correct"]][:5]
    for r in right + wrong:
        source = by_template.get(r["template"])
        # one sample per question (`samples: 1`) keeps the question's id: no parent_id
        question = source.get("parent_id") or source["id"] if source else None
        r["learned_from"] = f"{source['id']} (question {question})" if source else "-"
    return right, wrong


def _example_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| question id | question | student's SQL | gold SQL | learned from sample |"]
    lines.append("|---|---|---|---|---|")
    for r in rows:
        cells = [r["id"], r["question"], str(r["answer"]).strip(), r["gold_sql"], r["learned_from"]]
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    return lines


def write_intern_report(
    curated_run: RunResult,
    raw_run: RunResult,
    workspace: Path,
    results: list[dict[str, Any]],
    answers: dict[tuple[str, str], list[dict[str, Any]]],
    training_runs: list[str],
    train_rows: list[dict[str, Any]],
    config: dict[str, Any],
    timings: dict[str, float],
) -> Path:
    from assay.train.eval import results_table
    from assay.train.report import write_report

    out = curated_run.run_dir
    write_report(
        out / "training", "intern: training and evaluation", results, runs=training_runs,
        workspace=str(workspace),
    )  # fmt: skip
    funnel = curated_run.funnel()
    generated = sum(1 for _ in raw_run.to_arrow()["id"].to_pylist())
    right, wrong = _examples(answers, train_rows)
    md = ["# The intern job: text-to-SQL, student vs teacher", ""]
    md += [f"Curation run `{curated_run.run_id}`; training runs {', '.join(training_runs)}.", ""]
    md += ["## Result", "", results_table(results), "", "## Goals", "", *goal_lines(results), ""]
    md += ["## Funnel", "", f"- teacher samples generated: {generated}"]
    for stage in funnel:
        md.append(
            f"- {stage['name']}: {stage['rows_in']} in, {stage['rows_out']} out, "
            f"{stage['rows_rejected']} rejected"
        )
    md += [f"- trained on: {len(train_rows)} verified samples (the uncurated student on as many raw ones)", ""]  # fmt: skip
    md += [
        "## Plots",
        "",
        "![loss](training/loss.png)",
        "",
        "![accuracy](training/accuracy.png)",
        "",
    ]
    md += ["## Held-out questions the student now gets right (the base model did not)", ""]
    md += _example_table(right) + [""]
    md += ["## Held-out questions the student still gets wrong", ""]
    md += _example_table(wrong) + [""]
    md += ["## Time", ""] + [f"- {k}: {v:.0f} s" for k, v in timings.items()] + [""]
    md += ["## Configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(_html(text))
    (out / "intern_results.json").write_text(json.dumps(results, indent=2))
    return out / "report.md"


def _html(markdown: str) -> str:
    """A small Markdown subset (headings, tables, lists, images, code) as HTML, escaped."""
    body, in_table, in_code = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if set("".join(cells)) <= set("-: "):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>")
            body.append("".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>intern report</title>"
        f"<style>{style}table{{border-collapse:collapse}}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
