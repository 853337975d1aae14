"""LSH banding: choosing b bands x r rows for a Jaccard threshold, and the S-curve it gives.

Two documents with Jaccard similarity s share all r values of one band with probability
s^r, so they become a candidate pair (share at least one of b bands) with probability

    P(s) = 1 - (1 - s^r)^b

`choose_bands` takes the largest r (fewest false positives) whose b = num_perm // r bands
still make P(threshold) >= `recall_at_threshold` (0.97 by default): the curve is steep
around the threshold, and candidates are then checked by exact Jaccard, so a few extra
candidates cost time, never precision. For num_perm=128, threshold=0.8 this is b=18, r=7:

    s     0.5   0.6   0.7   0.8   0.85  0.9   0.95
    P(s)  0.13  0.40  0.79  0.986 0.999 1.00  1.00
"""

from __future__ import annotations

import numpy as np


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> np.ndarray:
    """P(a pair with Jaccard `s` shares at least one band) for b=`bands`, r=`rows`."""
    return 1.0 - (1.0 - np.asarray(s, np.float64) ** rows) ** bands


def choose_bands(
    threshold: float, num_perm: int, recall_at_threshold: float = 0.97
) -> tuple[int, int]:
    """(bands, rows) for `threshold`: the largest r with P(threshold) >= the recall target."""
    if not 0.0 < threshold < 1.0:
        raise ValueError("threshold must be between 0 and 1")
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall_at_threshold:
            best = (bands, rows)
    return best


def s_curve(
    bands: int, rows: int, points: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
) -> str:
    """A two-line table of P(candidate) at `points`, for docs and logs."""
    head = "s     " + " ".join(f"{s:<5}" for s in points)
    probs = candidate_probability(np.array(points), bands, rows)
    body = "P(s)  " + " ".join(f"{p:<5.3f}" for p in probs)
    return f"{head}\n{body}"
