"""Prompts prefilled in column chunks, so attention's score matrices stay bounded.

A prefill's attention holds `rows x heads x columns x keys` scores (the fast path's shared
prefix attention several such matrices at once): 8 BFCL prompts of 3,500 tokens with a
500-token shared prefix took 9.8 GB in one layer of the embedded model's shape. Feeding the
rows' own tokens a chunk of columns at a time, each chunk attending to the cache filled so
far, computes the same attention with at most `PREFILL_SCORE_FLOATS` scores per matrix.
"""

from __future__ import annotations

PREFILL_SCORE_FLOATS = 1 << 25  # 128 MB of fp32 scores per matrix
MIN_CHUNK_COLUMNS = 16  # fewer columns per call would cost more in per-call overhead


def prefill_chunks(
    rows: int, heads: int, columns: int, keys: int, budget: int | None = None
) -> list[slice]:
    """Near-equal slices of the `columns` own tokens to feed one call at a time, each call's
    scores (`rows x heads x chunk x keys`, `keys` the longest row's prompt) within `budget`
    floats (`PREFILL_SCORE_FLOATS` by default); the budget never makes the widest chunk
    narrower than `MIN_CHUNK_COLUMNS`."""
    if columns <= 0:
        return []
    budget = PREFILL_SCORE_FLOATS if budget is None else budget
    widest = max(MIN_CHUNK_COLUMNS, budget // max(1, rows * heads * keys))
    count = -(-columns // widest)
    size, extra = divmod(columns, count)
    chunks, start = [], 0
    for k in range(count):
        end = start + size + (1 if k < extra else 0)
        chunks.append(slice(start, end))
        start = end
    return chunks
