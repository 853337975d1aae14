"""The row positions an indexed search matches, kept in page order.

A search's next and deep pages are then a slice of its positions and a fetch of 50 rows,
not a scan of the text and a top-N of offset + limit matches each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

from assay.viewer import search as search_index
from assay.viewer.lru import LRU

if TYPE_CHECKING:
    import numpy as np

MATCHES = LRU(8)  # (dataset, where, order, params) -> the matching positions, page order
MAX_MATCHES = 1_000_000  # more are not kept (8 bytes each): those pages take a top-N each
DEEP = 500  # a sorted search keeps its positions from this offset on (a full sort of them)


def param_items(params: dict[str, Any]) -> tuple[Any, ...]:
    """A search's parameters as part of its `matches` key."""
    return tuple(sorted(params.items()))


def matches(
    con: duckdb.DuckDBPyConnection,
    index: search_index.SearchIndex,
    key: tuple[Any, ...],
    compute: bool = True,
) -> np.ndarray | None:
    """Every position matching the search `key` (dataset key, where clause, order, params),
    in page order: computed once per search (when `compute`) and kept (`MATCHES`), so a
    page is a slice of it, not a scan of every row and a top-N of offset + limit matches
    (page 900: 45,000). More than `MAX_MATCHES` are used once, not kept (None after)."""
    found = MATCHES.get(key)
    if found is None and compute:
        _, fast_where, order, items = key
        pos = search_index.POS
        sql = f"select {pos} from {index.table}{fast_where}{order}"
        found = con.execute(sql, dict(items)).fetchnumpy()[pos]  # int64, 8 bytes a match
        MATCHES.put(key, found if len(found) <= MAX_MATCHES else False)
    return None if found is None or found is False else found


def rows_at(
    con: duckdb.DuckDBPyConnection,
    index: search_index.SearchIndex,
    cols: list[str],
    positions: np.ndarray,
) -> list[dict[str, Any]]:
    """The rows at `positions` (a numpy int64 slice), in that order."""
    wanted = positions.tolist()
    if not wanted:
        return []
    pos = search_index.POS
    cur = con.execute(
        f"select {pos}, {', '.join(search_index.quote(c) for c in cols)} from {index.table} "
        f"where {pos} between $lo and $hi and {pos} in (select unnest($p::bigint[]))",
        {"lo": min(wanted), "hi": max(wanted), "p": wanted},
    )
    names = [d[0] for d in cur.description][1:]
    by_pos = {r[0]: dict(zip(names, r[1:], strict=True)) for r in cur.fetchall()}
    return [by_pos[p] for p in wanted]
