"""Deduplication and decontamination stages.

- `ExactDedupe`: normalised-text hash equality.
- `MinhashDedupe`: MinHash + LSH near duplicates, exact Jaccard checks, union-find clusters.
- `SemanticDedupe`: embedding cosine similarity, blocked matrix products.
- `Decontaminate`: n-gram overlap with named evaluation sets.

Each dedupe stage writes a `cluster_id` column (the kept row's id) and sends removed rows
to the rejects with a reason naming the row they duplicate. See docs/dedupe.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assay.operators.dedupe.decontaminate import Decontaminate, EvalSet
    from assay.operators.dedupe.exact import ExactDedupe
    from assay.operators.dedupe.minhash import MinhashDedupe
    from assay.operators.dedupe.semantic import SemanticDedupe

__all__ = ["Decontaminate", "EvalSet", "ExactDedupe", "MinhashDedupe", "SemanticDedupe"]

# imported on first use: `from assay.operators.dedupe.exact import ExactDedupe` pays for
# that module alone, not for MinHash, embeddings and decontamination
_MODULES = {
    "Decontaminate": "decontaminate",
    "EvalSet": "decontaminate",
    "ExactDedupe": "exact",
    "MinhashDedupe": "minhash",
    "SemanticDedupe": "semantic",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
