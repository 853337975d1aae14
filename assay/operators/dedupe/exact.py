"""ExactDedupe: drop rows whose normalised text equals an earlier row's."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader, Outcome, Stage, split_by_mask

_SEPARATOR = "\x1f"  # unit separator: cannot be confused with text joined from two columns


def normalized_text(
    table: pa.Table,
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
            expr = expr.str.replace_all(r"\s+", " ").str.strip_chars()
        parts.append(expr)
    return parts[0] if len(parts) == 1 else pl.concat_str(parts, separator=_SEPARATOR)


@register
class ExactDedupe(Stage):
    """Keep the first row of each group whose normalised `columns` are equal.

    "First" is the input order, so the keeper is deterministic. Normalisation is
    configurable (Unicode NFKC, case, whitespace runs, punctuation).

    Input columns: `columns` (strings). Output columns: `cluster_id` (string: the id of the
    kept row of the row's group; its own id when it has no duplicate).
    Rejects: "exact duplicate of <id>".

    Example: `ExactDedupe(columns=["prompt", "response"], punctuation=True)`.
    """

    needs_fit = True

    columns: list[str] = ["text"]
    lowercase: bool = True
    whitespace: bool = True
    punctuation: bool = False
    unicode_form: str | None = "NFKC"
    cluster_column: str = "cluster_id"

    _dup_hashes: np.ndarray = np.empty(0, np.uint64)
    _keepers: dict[int, str] = {}

    def input_columns(self) -> list[str]:
        return list(self.columns)

    def hashes(self, table: pa.Table) -> np.ndarray:
        """64-bit hash of each row's normalised text (polars' vectorised hash)."""
        expr = normalized_text(
            table,
            self.columns,
            lowercase=self.lowercase,
            whitespace=self.whitespace,
            punctuation=self.punctuation,
            unicode_form=self.unicode_form,
        )
        frame = pl.from_arrow(table.select(self.columns))
        assert isinstance(frame, pl.DataFrame)
        return frame.select(expr.hash(seed=0)).to_series().to_numpy()

    def fit(self, read_input: BatchReader) -> None:
        hashes, ids = [], []
        for batch in read_input():
            hashes.append(self.hashes(batch))
            ids.extend(batch[ID].chunks)
        if not hashes:
            return
        all_hashes = np.concatenate(hashes)
        unique, first, counts = np.unique(all_hashes, return_index=True, return_counts=True)
        duplicated = counts > 1
        self._dup_hashes = unique[duplicated]  # sorted, for searchsorted
        keeper_ids = pa.chunked_array(ids, pa.string()).take(first[duplicated]).to_pylist()
        self._keepers = dict(zip(self._dup_hashes.tolist(), keeper_ids, strict=True))

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        hashes = self.hashes(table)
        ids = table[ID].to_pylist()
        cluster = list(ids)
        mask = np.ones(len(ids), dtype=bool)
        reasons: list[str | None] = [None] * len(ids)
        if len(self._dup_hashes):
            pos = np.searchsorted(self._dup_hashes, hashes)
            pos[pos == len(self._dup_hashes)] = 0
            in_group = self._dup_hashes[pos] == hashes
            for i in np.flatnonzero(in_group):  # rows in duplicate groups only
                keeper = self._keepers[int(hashes[i])]
                cluster[i] = keeper
                if ids[i] != keeper:
                    mask[i] = False
                    reasons[i] = f"exact duplicate of {keeper}"
        if self.cluster_column in table.column_names:
            table = table.drop_columns([self.cluster_column])
        table = table.append_column(self.cluster_column, pa.array(cluster, pa.string()))
        return split_by_mask(self.name, table, mask, pa.array(reasons, pa.string()))
