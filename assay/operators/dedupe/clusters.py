"""ClusterAssignment: the result of a dedupe fit, applied batch by batch.

A fit finds, for every row that has a duplicate, the id of its cluster's keeper (the first
row of the cluster in input order), optionally the row it was matched with (when clusters
are connected components, a row can be linked to the keeper through others) and the
similarity of that match. Rows without a duplicate are not stored: they keep themselves.
`apply` adds the cluster column to a batch and sends every non-keeper to the rejects with a
reason naming the row it duplicates. The members' id hashes are sorted once per fit, so a
batch finds its members by binary search (and a string comparison), not by a join that
would hash every member id again for each batch.

A stage's fit describes its clusters by row position (`ClusterFit`); `from_fit` turns the
positions into ids. Ids must be unique: an id given to two rows could not say which of
them a cluster means, so both constructors refuse a repeated id, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from assay.curate.stage import ID, Outcome, split_by_mask


class ClusterAssignment:
    """Members of multi-row clusters: `row_ids[i]` belongs to the cluster kept as `keepers[i]`.

    `reason` is a template with `{keeper}`, `{match}` (`matches[i]`, or the keeper when no
    matches are given) and `{score}` (two decimals), e.g.
    "near duplicate of {match} (jaccard {score})".
    """

    def __init__(
        self,
        row_ids: pa.Array | pa.ChunkedArray,
        keepers: pa.Array | pa.ChunkedArray,
        reason: str,
        scores: np.ndarray | None = None,
        matches: pa.Array | pa.ChunkedArray | None = None,
    ) -> None:
        columns: dict[str, object] = {
            "_row": pl.Series(row_ids).cast(pl.String),
            "_keeper": pl.Series(keepers).cast(pl.String),
            "_match": pl.Series(keepers if matches is None else matches).cast(pl.String),
        }
        n = len(row_ids)
        columns["_score"] = pl.Series(
            np.full(n, np.nan) if scores is None else np.asarray(scores, np.float64)
        )
        self.frame = pl.DataFrame(columns)
        check_unique(self.frame["_row"])
        self.reason = reason
        self._lookup = _HashLookup.build(self.frame["_row"])

    @classmethod
    def from_fit(cls, fit: ClusterFit, reason: str) -> ClusterAssignment:
        """The assignment of a fit's positions, after checking every input id is unique."""
        check_unique(pl.Series(fit.ids).cast(pl.String))
        take = fit.ids.take
        return cls(
            take(fit.members),
            take(fit.keepers),
            reason,
            fit.scores,
            None if fit.matches is None else take(fit.matches),
        )

    def apply(self, stage: str, table: pa.Table, cluster_column: str) -> pa.Table | Outcome:
        """Add `cluster_column` (keeper id) to `table`; reject rows that are not keepers."""
        rows = pl.Series(table[ID]).cast(pl.String)
        if self._lookup is None:  # two member ids share a 64-bit hash: join instead
            at, found = self._joined(rows)
        else:
            at, found = self._lookup.find(rows, self.frame)
        cluster = rows.clone().scatter(at, found["_keeper"])
        keep = (cluster == rows).to_arrow()
        reasons = pl.Series("_reason", [], pl.String).extend_constant(None, len(rows))
        reasons = reasons.scatter(at, found.select(self._reason_expr()).to_series()).to_arrow()
        if cluster_column in table.column_names:
            table = table.drop_columns([cluster_column])
        table = table.append_column(cluster_column, cluster.to_arrow().cast(pa.string()))
        return split_by_mask(stage, table, keep, reasons)

    def _joined(self, rows: pl.Series) -> tuple[np.ndarray, pl.DataFrame]:
        """(positions in `rows` of cluster members, their rows of `frame`) by a hash join."""
        ids = pl.DataFrame({"_row": rows})
        joined = ids.join(self.frame, on="_row", how="left", maintain_order="left")
        at = joined["_keeper"].is_not_null().arg_true().to_numpy()
        return at, joined[at]

    def _reason_expr(self) -> pl.Expr:
        parts: list[str | pl.Expr] = []
        rest = self.reason
        while rest:
            head, brace, rest = rest.partition("{")
            parts.append(pl.lit(head))
            if not brace:
                break
            field, _, rest = rest.partition("}")
            if field in ("keeper", "match"):
                parts.append(pl.col(f"_{field}"))
            elif field == "score":
                parts.append(pl.col("_score").round(2).cast(pl.String).str.pad_end(4, "0"))
            else:
                raise ValueError(f"unknown field {{{field}}} in reason {self.reason!r}")
        return pl.concat_str(parts).alias("_reason")


@dataclass(frozen=True)
class _HashLookup:
    """The member ids' 64-bit hashes, sorted once per fit: a batch's rows are found by
    binary search on their hashes (then compared as strings), instead of a hash join that
    rebuilt a table of every member id for each batch."""

    hashes: np.ndarray  # sorted, as int64 (numpy searches int64 ~2.5x faster than uint64)
    order: np.ndarray  # hashes[i] belongs to frame row order[i]

    @classmethod
    def build(cls, ids: pl.Series) -> _HashLookup | None:
        """The lookup of `ids` (unique), or None if two of them share a hash."""
        hashes = ids.hash(seed=0).to_numpy().view(np.int64)
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        if len(hashes) > 1 and bool((hashes[1:] == hashes[:-1]).any()):
            return None
        return cls(hashes, order)

    def find(self, rows: pl.Series, frame: pl.DataFrame) -> tuple[np.ndarray, pl.DataFrame]:
        """(positions in `rows` of ids in `frame["_row"]`, those rows of `frame`)."""
        if len(self.hashes) == 0:
            return np.empty(0, np.int64), frame.clear()
        wanted = rows.hash(seed=0).to_numpy().view(np.int64)
        slot = np.searchsorted(self.hashes, wanted).clip(max=len(self.hashes) - 1)
        at = np.flatnonzero(self.hashes[slot] == wanted)
        found = frame[self.order[slot[at]]]
        same = (found["_row"] == rows.gather(at)).fill_null(False).to_numpy()
        return at[same], found.filter(same)


@dataclass
class ClusterFit:
    """What a dedupe fit found, by row position (0 = the first row of its input).

    `ids`: every input row's id, in input order. `members`: positions of the rows in
    clusters of two or more; `keepers[i]`: the position of `members[i]`'s kept row.
    `matches[i]` / `scores[i]`: the row `members[i]` matched best and that similarity (for
    the reason; None when the reason names only the keeper). `pairs`: similar pairs the fit
    found; `edges`: how many of them it kept to build the clusters.
    """

    ids: pa.ChunkedArray
    members: np.ndarray
    keepers: np.ndarray
    matches: np.ndarray | None = None
    scores: np.ndarray | None = None
    pairs: int = 0
    edges: int = 0


def check_unique(ids: pl.Series) -> None:
    """Raise DuplicateIdError (a ValueError) naming the first id that occurs more than once."""
    repeated = ids.filter(ids.is_duplicated())
    if len(repeated):
        first = repeated[0]
        count = int((ids == first).sum())
        raise DuplicateIdError(first, count)


class DuplicateIdError(ValueError):
    """A row id occurs more than once where ids must name one row each."""

    def __init__(self, row_id: str, count: int) -> None:
        self.row_id = row_id
        super().__init__(
            f"row id {row_id!r} occurs {count} times; deduplication needs one id per row "
            "(give the source unique ids)"
        )


def cluster_members(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows in a cluster of two or more, their keeper) from component labels."""
    in_cluster = labels != np.arange(len(labels))
    in_cluster[labels[in_cluster]] = True
    members = np.flatnonzero(in_cluster)
    return members, labels[members]


def best_matches(
    members: np.ndarray, left: np.ndarray, right: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each of `members`: its neighbour with the highest score (ties: the earlier row)
    among the edges `left[i] - right[i]`, and that score. Every member must have an edge."""
    if len(members) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    rows = np.concatenate([left, right])
    other = np.concatenate([right, left])
    both = np.concatenate([score, score])
    order = np.lexsort((other, -both, rows))
    rows, other, both = rows[order], other[order], both[order]
    first = np.r_[True, rows[1:] != rows[:-1]]
    at = np.searchsorted(rows[first], members)
    return other[first][at], both[first][at]
