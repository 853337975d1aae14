"""Calibrating a distilled judge on validation rows, and what it scores there.

`platt(logits, labels)` fits Platt scaling (P(grounded) = sigmoid(a * logit + b)), so the
judge's default cut 0.5 is the validation split's; `validation_metrics(rows, logits)` gives
the pairwise accuracy and accuracy at that cut that go into `judge.json`.
Rows: `grounded` (bool), `parent_id` for pairs.
"""

from __future__ import annotations

import math
from typing import Any


def platt(logits: list[float], labels: list[bool]) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * logit + b) on these rows (Newton)."""
    import torch

    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor([float(v) for v in labels], dtype=torch.float64)
    w = torch.zeros(2, dtype=torch.float64)
    w[0] = 1.0
    x = torch.stack([z, torch.ones_like(z)], 1)
    for _ in range(50):
        p = torch.sigmoid(x @ w)
        grad = x.T @ (p - y) + 1e-6 * w
        hess = (x * (p * (1 - p)).unsqueeze(1)).T @ x + 1e-6 * torch.eye(2, dtype=torch.float64)
        delta = torch.linalg.solve(hess, grad)
        w -= delta
        if float(delta.abs().max()) < 1e-10:
            break
    return float(w[0]), float(w[1])


def validation_metrics(rows: list[dict[str, Any]], logits: list[float]) -> dict[str, Any]:
    """Pairwise accuracy and accuracy at the calibrated cut on the validation rows."""
    from assay.judges.evaluate import pairs_of
    from assay.judges.metrics import classification_metrics, pairwise_accuracy

    probs = [1 / (1 + math.exp(-min(max(z, -50.0), 50.0))) for z in logits]
    labels = [bool(r["grounded"]) for r in rows]
    metrics = classification_metrics(labels, probs, 0.5)
    good, bad = pairs_of(rows, probs)
    pairwise, _ = pairwise_accuracy(good, bad)
    return {
        "rows": len(rows),
        "pairs": len(good),
        "pairwise": round(pairwise, 4) if good else None,
        "accuracy": round(metrics["accuracy"], 4),
        "balanced_accuracy": round(metrics["balanced_accuracy"], 4),
        "kappa": round(metrics["kappa"], 4),
    }
