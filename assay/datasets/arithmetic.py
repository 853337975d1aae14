"""Arithmetic word-free problems ("What is 7+12?") with gold answers, for demos and evals."""

from __future__ import annotations

import random
from typing import Any


def addition_problems(n: int, seed: int = 0, max_operand: int = 20) -> list[dict[str, Any]]:
    """`n` problems "What is a+b?" with a, b in [0, max_operand].

    Output columns: `id` ("add-<k>"), `question` (string), `answer` (int).
    """
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        rows.append({"id": f"add-{k}", "question": f"What is {a}+{b}?", "answer": a + b})
    return rows
