"""Chart geometry for server-rendered SVG (the templates draw it; no chart library, no JS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


@dataclass
class Bar:
    label: str
    kept_width: float
    rejected_width: float
    rows_in: int
    rows_out: int
    rejected: int
    y: float


def funnel_bars(funnel: list[dict[str, Any]], width: float = 520, row_h: float = 30) -> list[Bar]:
    """One bar per stage, scaled to the largest input: kept rows, then rejected rows."""
    top = max([int(r["rows_in"] or 0) for r in funnel] + [1])
    bars = []
    for i, r in enumerate(funnel):
        out, rej = int(r["rows_out"] or 0), int(r["rows_rejected"] or 0)
        bars.append(
            Bar(
                label=f"{r['stage_index']} {r['name']}",
                kept_width=width * out / top,
                rejected_width=width * rej / top,
                rows_in=int(r["rows_in"] or 0),
                rows_out=out,
                rejected=rej,
                y=i * row_h,
            )
        )
    return bars


@dataclass
class Series:
    name: str
    color: str
    points: str  # "x,y x,y ..." for <polyline>
    last: float


@dataclass
class LineChart:
    title: str
    series: list[Series]
    width: float
    height: float
    x_min: float
    x_max: float
    y_min: float
    y_max: float


def line_chart(
    title: str,
    curves: dict[str, list[tuple[float, float]]],
    width: float = 460,
    height: float = 200,
) -> LineChart:
    """Several (x, y) curves on shared axes (y padded so flat curves stay visible)."""
    xs = [x for pts in curves.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in curves.values() for _, y in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    series = []
    for i, (name, pts) in enumerate(sorted(curves.items())):
        coords = " ".join(
            f"{(x - x0) / (x1 - x0) * width:.1f},{height - (y - y0) / (y1 - y0) * height:.1f}"
            for x, y in sorted(pts)
        )
        series.append(Series(name, PALETTE[i % len(PALETTE)], coords, sorted(pts)[-1][1]))
    return LineChart(title, series, width, height, x0, x1, y0, y1)
