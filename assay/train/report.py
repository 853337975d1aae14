"""The training report: Markdown + HTML with the comparison table and PNG plots.

`write_report(out_dir, title, results, runs, labels)`:
- `results`: `assay.train.eval.evaluate` results (base, teacher, student, uncurated student:
  the models are named in `labels`, e.g. {"smollm2-135m": "base"});
- `runs`: training run ids whose loss (and, for GRPO, reward) curves are plotted from the
  run store.

Files: `report.md`, `report.html`, `loss.png`, `reward.png` (GRPO runs), `accuracy.png`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from assay.train.eval import results_table


def _plot_curves(store: Any, runs: list[str], metric: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from assay.train.store import metrics, training_run

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for run_id in runs:
        series = metrics(store, run_id, metric)
        if series:
            info = training_run(store, run_id) or {}
            label = f"{info.get('method', '?')} {info.get('model_name') or run_id}"
            ax.plot([s for s, _ in series], [v for _, v in series], label=label)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def _plot_accuracy(results: list[dict[str, Any]], labels: dict[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(f"{r['task']} ({r['prompt_style']})" for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(tasks)), 3.5))
    for m, model in enumerate(models):
        values = []
        for task in tasks:
            got = [
                r
                for r in results
                if r["model"] == model and f"{r['task']} ({r['prompt_style']})" == task
            ]
            values.append(100 * got[0]["accuracy"] if got else 0.0)
        xs = [t + m * width for t in range(len(tasks))]
        ax.bar(xs, values, width, label=labels.get(model, model))
    ax.set_xticks([t + width * (len(models) - 1) / 2 for t in range(len(tasks))], tasks, fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    out_dir: str | Path,
    title: str,
    results: list[dict[str, Any]],
    runs: list[str] | None = None,
    labels: dict[str, str] | None = None,
    workspace: str = ".assay",
    notes: str = "",
) -> Path:
    """Write the report files into `out_dir`; returns the Markdown file's path."""
    from assay.curate.store import RunStore

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = labels or {}
    named = [
        {
            **r,
            "model": f"{labels[r['model']]}: {r['model']}" if r["model"] in labels else r["model"],
        }
        for r in results
    ]
    images = []
    with RunStore(workspace) as store:
        if runs and _plot_curves(store, runs, "loss", out / "loss.png"):
            images.append(("loss curve", "loss.png"))
        if runs and _plot_curves(store, runs, "reward", out / "reward.png"):
            images.append(("reward curve (GRPO)", "reward.png"))
    if results:
        _plot_accuracy(named, {}, out / "accuracy.png")
        images.append(("accuracy", "accuracy.png"))
    table = results_table(named) if results else "(no evaluation results)"
    md = [f"# {title}", "", notes, "", table, ""]
    md += [f"![{alt}]({src})" for alt, src in images]
    if runs:
        md += ["", "Training runs: " + ", ".join(runs)]
    (out / "report.md").write_text("\n".join(md) + "\n")
    rows = table.splitlines()
    body = ""
    if results:
        head = [c.strip() for c in rows[0].strip("|").split("|")]
        body = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
        for line in rows[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            body += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        body += "</table>"
    imgs = "".join(
        f'<h3>{html.escape(a)}</h3><img src="{s}" alt="{html.escape(a)}">' for a, s in images
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        f"table{{border-collapse:collapse}}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(notes)}</p>{body}{imgs}</body></html>"
    )
    (out / "report.html").write_text(page)
    return out / "report.md"
