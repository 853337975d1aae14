"""ExactDedupe: drop rows whose normalised text equals an earlier row's."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import model_validator

from assay.curate.registry import register
from assay.curate.stage import ID, BatchReader
from assay.operators.dedupe.base import ClusterDedupe
from assay.operators.dedupe.clusters import ClusterFit
from assay.operators.dedupe.normalize import Normalization, TextNormalization, normalized

_SEPARATOR = "\x1f"  # unit separator: cannot be confused with text joined from two columns
REASON = "exact duplicate of {keeper}"
_LEGACY = ("lowercase", "whitespace", "punctuation", "unicode_form")


def normalized_text(
    table: pa.Table, columns: list[str], norm: Normalization, keep_spaces: bool
) -> pl.Series:
    """One string per row: `columns` normalised and joined (nulls as "")."""
    parts = []
    for column in columns:
        parts.append(normalized(pl.Series(table[column]), norm, keep_spaces))
    if len(parts) == 1:
        return parts[0]
    frame = pl.DataFrame({f"c{i}": p for i, p in enumerate(parts)})
    return frame.select(pl.concat_str(pl.all(), separator=_SEPARATOR)).to_series()


@register
class ExactDedupe(ClusterDedupe):
    """Keep the first row of each group whose normalised `columns` are equal.

    Each row's columns are normalised (`normalize`; by default Unicode NFKC, lower case,
    punctuation and symbols out: see `assay.operators.dedupe.normalize`), whitespace is
    dropped unless `keep_spaces` (so a mark deleted, "it's" -> "its", and a mark turned
    into a space, "it s", give the same key: what is compared is the letters and digits),
    the columns are joined, and the result hashed to 64 bits with polars' vectorised
    string hash (an xxh3-family hash; two distinct texts collide with probability
    ~n^2 / 2^65, about 3e-8 for a million rows). "First" is input order, so the keeper is
    deterministic. The older flags `lowercase`, `whitespace`, `punctuation` and
    `unicode_form` are still accepted: given any of them, they build `normalize` as they
    used to (punctuation kept unless asked) and `keep_spaces` is on.

    Input columns: `columns` (strings). Output columns: `cluster_column` (string: the id of
    the kept row of the row's group; its own id when it has no duplicate).
    Rejects: "exact duplicate of <id>".

    Example: `ExactDedupe(columns=["prompt", "response"])`; raw text:
    `ExactDedupe(normalize="none", keep_spaces=True)`; in a recipe
    `{ExactDedupe: {columns: [text], normalize: {digits: true}}}`.
    """

    reason: ClassVar[str] = REASON

    columns: list[str] = ["text"]
    normalize: Normalization = "default"  # a preset name or TextNormalization fields
    keep_spaces: bool = False

    @model_validator(mode="before")
    @classmethod
    def _legacy_flags(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(k in data for k in _LEGACY):
            return data
        if "normalize" in data:
            raise ValueError(f"give normalize or the older flags {_LEGACY}, not both")
        data = dict(data)
        flags = {k: data.pop(k) for k in _LEGACY if k in data}
        data["normalize"] = TextNormalization(**{"punctuation": False, **flags})
        data.setdefault("keep_spaces", True)
        return data

    def input_columns(self) -> list[str]:
        return list(self.columns)

    def hashes(self, table: pa.Table) -> np.ndarray:
        """64-bit hash of each row's normalised text (uint64)."""
        text = normalized_text(table, self.columns, self.normalize, self.keep_spaces)
        return text.hash(seed=0).to_numpy()

    def find_clusters(self, read_input: BatchReader) -> ClusterFit:
        hashes: list[np.ndarray] = []
        id_hashes: list[np.ndarray] = []
        ids: list[pa.Array] = []
        for batch in read_input():
            hashes.append(self.hashes(batch))
            batch_ids = batch[ID].cast(pa.string())
            ids.extend(batch_ids.chunks)
            # hashed batch by batch (while the input is still being made, when the executor
            # runs this fit beside the segment before): distinct hashes prove distinct ids
            id_hashes.append(pl.Series(batch_ids).hash(seed=0).to_numpy())
        all_hashes = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
        # rows of groups with a duplicate, then each one's first row: the unique over the
        # members only (a few percent of the rows) instead of over every row
        members = pl.Series(all_hashes).is_duplicated().arg_true().to_numpy().astype(np.int64)
        _, first, group = np.unique(all_hashes[members], return_index=True, return_inverse=True)
        all_ids = np.concatenate(id_hashes) if id_hashes else np.empty(0, np.uint64)
        return ClusterFit(
            pa.chunked_array(ids, pa.string()),
            members,
            members[first[group]],
            ids_unique=pl.Series(all_ids).n_unique() == len(all_ids),
        )
