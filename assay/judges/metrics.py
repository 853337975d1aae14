"""Agreement of a judge with labels: accuracy, balanced accuracy, Cohen's kappa, rank
correlations of scores, the confusion matrix, and HaluEval's pairwise accuracy.

A row the judge could not score (score None: a malformed or refused verdict) counts as a
wrong prediction in accuracy and as a tie (0.5) in pairwise accuracy, and `unjudged` says
how many there were: a judge never looks better by failing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def standard_error(p: float, n: int) -> float:
    """The binomial standard error of a proportion `p` measured on `n` rows."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def classification_metrics(
    labels: Sequence[bool], scores: Sequence[float | None], threshold: float = 0.5
) -> dict[str, Any]:
    """Metrics of `score >= threshold` as a prediction of `labels` (True = positive)."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    tp = fn = fp = tn = unjudged = 0
    for label, score in zip(labels, scores, strict=True):
        if score is None or (isinstance(score, float) and math.isnan(score)):
            unjudged += 1
            predicted = not label  # counts as a miss, whichever way the label goes
        else:
            predicted = score >= threshold
        if label:
            tp, fn = (tp + 1, fn) if predicted else (tp, fn + 1)
        else:
            fp, tn = (fp + 1, tn) if predicted else (fp, tn + 1)
    n = tp + fn + fp + tn
    accuracy = (tp + tn) / n if n else float("nan")
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    tnr = tn / (tn + fp) if tn + fp else float("nan")
    balanced = (tpr + tnr) / 2
    expected = ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / (n * n) if n else float("nan")
    kappa = (accuracy - expected) / (1 - expected) if n and expected != 1 else 0.0
    judged = [
        (float(label), float(s))
        for label, s in zip(labels, scores, strict=True)
        if s is not None and not (isinstance(s, float) and math.isnan(s))
    ]
    spearman = kendall = float("nan")
    if len(judged) > 2 and len({x for x, _ in judged}) > 1 and len({y for _, y in judged}) > 1:
        from scipy.stats import kendalltau, spearmanr

        xs, ys = zip(*judged, strict=True)
        spearman = float(spearmanr(xs, ys).statistic)
        kendall = float(kendalltau(xs, ys).statistic)
    return {
        "n": n,
        "unjudged": unjudged,
        "accuracy": accuracy,
        "accuracy_se": standard_error(accuracy, n),
        "balanced_accuracy": balanced,
        "kappa": kappa,
        "spearman": spearman,
        "kendall": kendall,
        "confusion": {"tp": tp, "fn": fn, "fp": fp, "tn": tn},
        "threshold": threshold,
    }


def pairwise_accuracy(
    good: Sequence[float | None], bad: Sequence[float | None]
) -> tuple[float, float]:
    """Share of pairs where the good answer scores above the bad one (ties and unscored count
    0.5), and its standard error."""
    if len(good) != len(bad):
        raise ValueError(f"{len(good)} good scores but {len(bad)} bad ones")
    if not good:
        return float("nan"), float("nan")
    wins = 0.0
    for g, b in zip(good, bad, strict=True):
        if g is None or b is None or g == b:
            wins += 0.5
        elif g > b:
            wins += 1.0
    p = wins / len(good)
    return p, standard_error(p, len(good))


def best_threshold(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """The cut `score >= t` with the highest accuracy on these rows (for baselines whose scores
    are not probabilities; fit it on training rows, never on the rows being reported)."""
    pairs = sorted(zip(scores, labels, strict=True))
    positives = sum(1 for _, label in pairs if label)
    best_t, best_correct = pairs[0][0] if pairs else 0.0, positives
    below_neg = below_pos = 0
    for i, (score, label) in enumerate(pairs):
        below_neg, below_pos = (below_neg, below_pos + 1) if label else (below_neg + 1, below_pos)
        nxt = pairs[i + 1][0] if i + 1 < len(pairs) else math.inf
        if nxt == score:
            continue
        correct = below_neg + (positives - below_pos)  # predict positive from `nxt` up
        if correct > best_correct:
            best_t, best_correct = nxt, correct
    return best_t
