"""The judge-eval report: a markdown table (judge and baselines), metrics.json, a PNG of the
judge's confusion matrix and a PNG of every method's score distribution per label."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

HEADLINE = (
    "Headline metric: pairwise accuracy, the share of pairs where the correct answer scores "
    "as more grounded than the hallucinated one (ties and unscored count 0.5)."
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(result: Any) -> str:
    lines = [
        "| method | pairwise acc. (± s.e.) | accuracy (± s.e.) | balanced acc. | kappa | "
        "Spearman | Kendall | unscored | s / 1000 rows | cost / 1000 rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result.methods:
        x = m.metrics
        lines.append(
            f"| {m.name} | {_fmt(x['pairwise'])} ± {_fmt(x['pairwise_se'])} | "
            f"{_fmt(x['accuracy'])} ± {_fmt(x['accuracy_se'])} | "
            f"{_fmt(x['balanced_accuracy'])} | {_fmt(x['kappa'])} | {_fmt(x['spearman'])} | "
            f"{_fmt(x['kendall'])} | {x['unjudged']} | {_fmt(x['seconds_per_1000'], 1)} | "
            f"${_fmt(x['cost_per_1000'], 4)} |"
        )
    return "\n".join(lines)


def render(result: Any, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    judge = result.methods[0]
    c = judge.metrics["confusion"]
    n_pairs = judge.metrics["pairs"]
    notes = [f"- {m.name}: {m.note}" for m in result.methods if m.note]
    text = [
        f"# Judge evaluation: {judge.name} on {result.data} ({result.split})",
        "",
        f"{len(result.rows)} rows, {n_pairs} pairs. {HEADLINE}",
        "A score >= the cut predicts grounded (0.5 for judges).",
        "",
        table(result),
        "",
        *notes,
        "",
        f"Confusion matrix of {judge.name} (rows: label, columns: prediction):",
        "",
        "| | predicted grounded | predicted not |",
        "|---|---|---|",
        f"| grounded | {c['tp']} | {c['fn']} |",
        f"| not grounded | {c['fp']} | {c['tn']} |",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "![scores per label](scores.png)",
    ]
    if result.card:
        text += ["", "## Data", "", result.card]
    report = out / "report.md"
    report.write_text("\n".join(text) + "\n")
    metrics = {
        "data": result.data,
        "split": result.split,
        "rows": len(result.rows),
        "methods": {m.name: {**m.metrics, "note": m.note} for m in result.methods},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    _plots(result, out)
    return report


def _plots(result: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judge = result.methods[0]
    c = judge.metrics["confusion"]
    grid = [[c["tp"], c["fn"]], [c["fp"], c["tn"]]]
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(grid, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(grid[i][j]), ha="center", va="center")
    ax.set_xticks([0, 1], ["grounded", "not"])
    ax.set_yticks([0, 1], ["grounded", "not"])
    ax.set_xlabel("prediction")
    ax.set_ylabel("label")
    ax.set_title(f"{judge.name}: {result.data}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)

    labels = [bool(r["grounded"]) for r in result.rows]
    fig, axes = plt.subplots(1, len(result.methods), figsize=(4 * len(result.methods), 3))
    for ax, m in zip(list(getattr(axes, "flat", [axes])), result.methods, strict=True):
        for label, colour in ((True, "tab:green"), (False, "tab:red")):
            values = [
                s for s, y in zip(m.scores, labels, strict=True) if y is label and s is not None
            ]
            if values:
                ax.hist(
                    values,
                    bins=20,
                    alpha=0.6,
                    color=colour,
                    label="grounded" if label else "hallucinated",
                )
        ax.set_title(m.name, fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scores.png", dpi=100)
    plt.close(fig)
