"""ClusterDedupe: the fit-then-process contract the three dedupe stages share.

A subclass implements `find_clusters(read_input) -> ClusterFit` (its whole input, by row
position) and sets `reason`; the base class checks the ids, turns the positions into a
`ClusterAssignment`, records `fit_stats`, and in `process` adds `cluster_column` to each
batch and sends every row that is not its cluster's keeper to the rejects.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from assay.curate.errors import StageError
from assay.curate.stage import BatchReader, Outcome, Stage
from assay.operators.dedupe.clusters import ClusterAssignment, ClusterFit, DuplicateIdError


@dataclass(frozen=True)
class FitStats:
    """What the last fit found: read it after `fit` (logs, benchmarks, tests).

    `rows`: rows read. `clusters`: clusters of two or more rows. `removed`: rows that are
    not their cluster's keeper (they go to the rejects). `pairs`: similar pairs found
    (MinhashDedupe: LSH candidate pairs; SemanticDedupe: pairs with cosine >= threshold;
    ExactDedupe groups by hash and reports 0). `edges`: pairs kept to build the clusters
    (SemanticDedupe keeps a spanning forest, at most `rows - 1`).
    """

    rows: int
    clusters: int
    removed: int
    pairs: int
    edges: int


class ClusterDedupe(Stage):
    """Base of the dedupe stages: a global fit finds clusters, process applies them.

    Input columns: the subclass's. Output columns: `cluster_column` (string: the id of the
    kept row of the row's cluster; its own id when it has no duplicate).
    Rejects: `reason` formatted with `{keeper}`, `{match}` and `{score}`.

    Example (a subclass):

        class LengthDedupe(ClusterDedupe):
            reason: ClassVar[str] = "same length as {keeper}"

            def find_clusters(self, read_input: BatchReader) -> ClusterFit:
                ...  # one pass over read_input(), return positions
    """

    needs_fit = True
    fit_overlaps = True  # a fit reads its input and computes; it shares nothing
    reason: ClassVar[str] = "duplicate of {keeper}"

    cluster_column: str = "cluster_id"

    _assignment: ClusterAssignment | None = None
    _fit_stats: FitStats | None = None

    @abstractmethod
    def find_clusters(self, read_input: BatchReader) -> ClusterFit:
        """One fit's clusters, by row position (see `ClusterFit`)."""

    def fit(self, read_input: BatchReader) -> None:
        self._assignment = self._fit_stats = None
        found = self.find_clusters(read_input)
        try:
            self._assignment = ClusterAssignment.from_fit(found, self.reason)
        except DuplicateIdError as exc:
            raise StageError(self.name, str(exc), row_id=exc.row_id) from exc
        self._fit_stats = FitStats(
            rows=len(found.ids),
            clusters=len(np.unique(found.keepers)),
            removed=int((found.members != found.keepers).sum()),
            pairs=found.pairs,
            edges=found.edges,
        )

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        if self._assignment is None:
            raise StageError(
                self.name,
                "fit() must run before process(): a dedupe stage needs its whole input "
                "first (an executor calls fit for stages with needs_fit = True)",
            )
        return self._assignment.apply(self.name, table, self.cluster_column)

    @property
    def fit_stats(self) -> FitStats:
        """Counts from the last `fit` (StageError before any)."""
        if self._fit_stats is None:
            raise StageError(self.name, "no fit_stats: fit() has not run")
        return self._fit_stats
