"""ExactDedupe: drop rows whose normalised text equals an earlier row's."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import polars as pl
import pyarrow as pa

from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader
from assay.operators.dedupe.base import ClusterDedupe
from assay.operators.dedupe.clusters import ClusterFit
from assay.operators.text import WHITESPACE_RUNS

_SEPARATOR = "\x1f"  # unit separator: cannot be confused with text joined from two columns
REASON = "exact duplicate of {keeper}"


def normalized_text(
    columns: list[str],
    *,
    lowercase: bool = True,
    whitespace: bool = True,
    punctuation: bool = False,
    unicode_form: str | None = "NFKC",
) -> pl.Expr:
    """A polars expression joining `columns` after the chosen normalisations (nulls as "")."""
    parts = []
    for column in columns:
        expr = pl.col(column).cast(pl.String).fill_null("")
        if unicode_form:
            expr = expr.str.normalize(unicode_form)
        if lowercase:
            expr = expr.str.to_lowercase()
        if punctuation:
            expr = expr.str.replace_all(r"[\p{P}\p{S}]", "")
        if whitespace:
            expr = expr.str.replace_all(WHITESPACE_RUNS, " ").str.strip_chars()
        parts.append(expr)
    return parts[0] if len(parts) == 1 else pl.concat_str(parts, separator=_SEPARATOR)


@register
class ExactDedupe(ClusterDedupe):
    """Keep the first row of each group whose normalised `columns` are equal.

    Each row's columns are normalised (Unicode NFKC, lower case, whitespace runs to one
    space; punctuation and symbols removed when `punctuation`), joined, and hashed to 64
    bits with polars' vectorised string hash (an xxh3-family hash; two distinct texts
    collide with probability ~n^2 / 2^65, about 3e-8 for a million rows). "First" is input
    order, so the keeper is deterministic.

    Input columns: `columns` (strings). Output columns: `cluster_column` (string: the id of
    the kept row of the row's group; its own id when it has no duplicate).
    Rejects: "exact duplicate of <id>".

    Example: `ExactDedupe(columns=["prompt", "response"], punctuation=True)`; in a recipe
    `{ExactDedupe: {columns: [text]}}`.
    """

    reason: ClassVar[str] = REASON

    columns: list[str] = ["text"]
    lowercase: bool = True
    whitespace: bool = True
    punctuation: bool = False
    unicode_form: str | None = "NFKC"

    def input_columns(self) -> list[str]:
        return list(self.columns)

    def hashes(self, table: pa.Table) -> np.ndarray:
        """64-bit hash of each row's normalised text (uint64)."""
        expr = normalized_text(
            self.columns,
            lowercase=self.lowercase,
            whitespace=self.whitespace,
            punctuation=self.punctuation,
            unicode_form=self.unicode_form,
        )
        frame = pl.from_arrow(table.select(self.columns))
        assert isinstance(frame, pl.DataFrame)
        return frame.select(expr.hash(seed=0)).to_series().to_numpy()

    def find_clusters(self, read_input: BatchReader) -> ClusterFit:
        hashes: list[np.ndarray] = []
        ids: list[pa.Array] = []
        for batch in read_input():
            hashes.append(self.hashes(batch))
            ids.extend(batch[ID].cast(pa.string()).chunks)
        all_hashes = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        _, first, group, counts = np.unique(
            all_hashes, return_index=True, return_inverse=True, return_counts=True
        )
        members = np.flatnonzero(counts[group] > 1)  # rows of groups with a duplicate
        return ClusterFit(pa.chunked_array(ids, pa.string()), members, first[group[members]])
