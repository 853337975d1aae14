"""ClusterAssignment: the result of a dedupe fit, applied batch by batch.

A fit finds, for every row that has a duplicate, the id of its cluster's keeper (the first
row of the cluster in input order), optionally the row it was matched with (when clusters
are connected components, a row can be linked to the keeper through others) and the
similarity of that match. Rows without a duplicate are not stored: they keep themselves.
`apply` adds the cluster column to a batch and sends every non-keeper to the rejects with a
reason naming the row it duplicates. The members' id hashes are sorted and bucketed once
per fit, so a batch finds its members with an array lookup per id (and a string
comparison), not by a join that would hash every member id again for each batch.

A stage's fit describes its clusters by row position (`ClusterFit`); `from_fit` turns the
positions into ids. Ids must be unique: an id given to two rows could not say which of
them a cluster means, so both constructors refuse a repeated id, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from assay.curate.arrays import bools, from_numpy
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
        frame = pl.DataFrame(columns)
        check_unique(frame["_row"])
        self.reason = reason
        # built once per fit: every batch looks its ids up here
        self._lookup = _HashLookup.build(frame["_row"])
        if self._lookup is not None:
            frame = frame[self._lookup.order]  # in hash order: a lookup's slot is a frame row
        self.frame = frame
        self._ids = frame["_row"].to_arrow()
        self._keepers = frame["_keeper"].to_arrow()
        self._is_keeper = (frame["_row"] == frame["_keeper"]).fill_null(False).to_numpy()

    @classmethod
    def from_fit(cls, fit: ClusterFit, reason: str) -> ClusterAssignment:
        """The assignment of a fit's positions, after checking every input id is unique."""
        if not fit.ids_unique:
            check_unique(pl.Series(fit.ids).cast(pl.String))

        def take(positions: np.ndarray) -> pa.ChunkedArray:
            return fit.ids.take(from_numpy(np.asarray(positions, np.int64)))

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
        ids = rows.to_arrow()
        at, slot = self._members(rows, ids)
        n = len(rows)
        keep = np.ones(n, bool)
        keep[at] = self._is_keeper[slot]
        if rows.null_count():  # a null id matches no member and is dropped, as before
            keep &= rows.is_not_null().to_numpy()
        member = np.zeros(n, bool)
        member[at] = True
        cluster = pc.replace_with_mask(
            ids, from_numpy(member), self._keepers.take(from_numpy(slot))
        )
        removed = ~self._is_keeper[slot]
        text = self.frame[slot[removed]].select(self._reason_expr()).to_series().to_arrow()
        index = np.full(n, -1, np.int64)
        index[at[removed]] = np.arange(len(text))
        reasons = text.take(from_numpy(index, mask=index < 0))
        if cluster_column in table.column_names:
            table = table.drop_columns([cluster_column])
        table = table.append_column(cluster_column, cluster.cast(pa.string()))
        return split_by_mask(stage, table, keep, reasons)

    def _members(self, rows: pl.Series, ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `rows` of cluster members, ascending; their rows of `frame`)."""
        if self._lookup is None:  # two member ids share a 64-bit hash: join instead
            index = self.frame.select("_row").with_row_index("_slot")
            joined = pl.DataFrame({"_row": rows}).join(
                index, on="_row", how="left", maintain_order="left"
            )["_slot"]
            at = joined.is_not_null().arg_true().to_numpy()
            return at, joined.gather(at).to_numpy().astype(np.int64)
        at, slot = self._lookup.find(rows.hash(seed=0).to_numpy())
        same = pc.equal(
            ids.take(from_numpy(at)), self._ids.take(from_numpy(slot))
        )  # a hash match: compare the ids
        same = bools(same)  # a null compares as not the same
        return at[same], slot[same]

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
    """The member ids' 64-bit hashes, sorted, with a table of where each run of hashes
    sharing their top bits starts: a batch's ids are found with one or two array lookups
    each (a binary search took ~17 cache misses per id), then compared as strings."""

    hashes: np.ndarray  # uint64, ascending
    order: np.ndarray  # hashes[i] is the hash of the ids' element order[i]
    starts: np.ndarray  # hashes with top bits b are hashes[starts[b]:starts[b + 1]]
    shift: np.uint64  # b = hash >> shift

    @classmethod
    def build(cls, ids: pl.Series) -> _HashLookup | None:
        """The lookup of `ids` (unique), or None if two of them share a hash."""
        hashes = ids.hash(seed=0).to_numpy()
        order = np.argsort(hashes, kind="stable")
        hashes = hashes[order]
        if len(hashes) > 1 and bool((hashes[1:] == hashes[:-1]).any()):
            return None
        bits = max(1, len(hashes).bit_length())  # about one hash per bucket or fewer
        shift = np.uint64(64 - bits)
        starts = np.zeros((1 << bits) + 1, np.int64)
        np.cumsum(
            np.bincount((hashes >> shift).astype(np.intp), minlength=1 << bits), out=starts[1:]
        )
        return cls(hashes, order, starts, shift)

    def find(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `wanted` whose hash is an id's, ascending; that id's slot)."""
        bucket = (wanted >> self.shift).astype(np.intp)
        low = self.starts[bucket]
        count = self.starts[bucket + 1] - low
        positions, slots = [], []
        candidates = np.flatnonzero(count)
        k = 0
        while len(candidates):  # k-th hash of each candidate's bucket (hashes are unique)
            slot = low[candidates] + k
            hit = self.hashes[slot] == wanted[candidates]
            positions.append(candidates[hit])
            slots.append(slot[hit])
            candidates = candidates[~hit & (count[candidates] > k + 1)]
            k += 1
        if not positions:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        at, slot = np.concatenate(positions), np.concatenate(slots)
        order = np.argsort(at, kind="stable")
        return at[order], slot[order]


@dataclass
class ClusterFit:
    """What a dedupe fit found, by row position (0 = the first row of its input).

    `ids`: every input row's id, in input order. `members`: positions of the rows in
    clusters of two or more; `keepers[i]`: the position of `members[i]`'s kept row.
    `matches[i]` / `scores[i]`: the row `members[i]` matched best and that similarity (for
    the reason; None when the reason names only the keeper). `pairs`: similar pairs the fit
    found; `edges`: how many of them it kept to build the clusters. `ids_unique`: the stage
    has shown the ids are unique (distinct hashes), so `from_fit` need not check them again.
    """

    ids: pa.ChunkedArray
    members: np.ndarray
    keepers: np.ndarray
    matches: np.ndarray | None = None
    scores: np.ndarray | None = None
    pairs: int = 0
    edges: int = 0
    ids_unique: bool = False


def check_unique(ids: pl.Series) -> None:
    """Raise DuplicateIdError (a ValueError) naming the first id that occurs more than once."""
    if ids.n_unique() == len(ids):  # the common case, ~6x cheaper than is_duplicated
        return
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
