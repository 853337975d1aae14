"""Read access to a workspace: the run store (DuckDB) and the Parquet shards of each run.

The viewer never holds the store open between requests: DuckDB lets one process write a file
(or many read it), so a viewer that kept a connection would stop `assay run` from starting.
Each access opens the file, does its query and closes it, under one lock per process (DuckDB
refuses a read-only and a read-write connection to one file in the same process).

Paths come from run ids that exist in the `runs` table and match a plain name; a run's folder
is `<workspace>/runs/<run_id>` and must resolve inside the workspace, so no request can name
a file outside it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from assay.curate.errors import AssayError
from assay.curate.store import RunStore

TABLES_TTL_S = 5.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


class ViewerError(AssayError):
    """Something the viewer cannot show, with a message a person can act on."""

    status = 400


class NotFound(ViewerError):
    status = 404


class Busy(ViewerError):
    """Another process holds the run store's write lock (an `assay run` in progress)."""

    status = 503


class Workspace:
    """One workspace directory (default `.assay`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.db_path = self.root / "assay.duckdb"
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tables: tuple[float, set[str]] | None = None

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection to the run store (read-only unless `write`).

        Re-entrant within a thread: a page opens the store once (an open costs ~50 ms) and
        every read under it shares that connection.
        """
        held = getattr(self._local, "con", None)
        if held is not None and not write:
            yield held
            return
        if not self.db_path.exists():
            raise NotFound(f"no run store at {self.db_path}: run a recipe first (assay run ...)")
        with self._lock:
            try:
                con = duckdb.connect(str(self.db_path), read_only=not write)
            except duckdb.IOException as exc:
                raise Busy(
                    f"the run store {self.db_path} is busy (an assay run is writing to it); "
                    f"reload when it finishes ({exc})"
                ) from exc
            self._local.con = None if write else con
            try:
                yield con
            finally:
                self._local.con = None
                con.close()
                if write:
                    self._tables = None

    @contextmanager
    def store(self) -> Iterator[RunStore]:
        """The run store's own queries (funnel, reject reasons), on the shared connection."""
        with self.connect() as con:
            # RunStore's queries only need its connection: reuse ours rather than open the
            # file a second time (RunStore() itself would create tables, a write)
            store = RunStore.__new__(RunStore)
            store.workspace, store.path, store.con = self.root, self.db_path, con
            yield store

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as con:
            return dicts(con, sql, params)

    def tables(self) -> set[str]:
        """The store's table names (kept a few seconds: pages ask several times)."""
        cached = self._tables
        if cached is not None and time.monotonic() - cached[0] < TABLES_TTL_S:
            return cached[1]
        with self.connect() as con:
            rows = con.execute(
                "select table_name from information_schema.tables where table_schema = 'main'"
            ).fetchall()
        names = {r[0] for r in rows}
        self._tables = (time.monotonic(), names)
        return names

    # runs and their files ---------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """The folder of a run (`<workspace>/runs/<id>`; refuses any other name or place)."""
        if not _NAME.match(run_id or ""):
            raise NotFound(f"no run {run_id!r}")
        path = (self.root / "runs" / run_id).resolve()
        if not path.is_relative_to(self.root / "runs") or not path.is_dir():
            raise NotFound(f"no run {run_id!r} in {self.root}")
        return path

    def output_files(self, run_id: str) -> list[str]:
        return self._parquet(self.run_dir(run_id) / "output")

    def reject_stages(self, run_id: str) -> dict[str, list[str]]:
        """Reject shards per stage folder (`<index>-<stage name>`), in stage order."""
        base = self.run_dir(run_id) / "rejects"
        if not base.is_dir():
            return {}
        out: dict[str, list[str]] = {}
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            files = self._parquet(folder)
            if files:
                out[folder.name] = files
        return out

    def _parquet(self, folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        files = []
        for f in sorted(folder.glob("*.parquet")):
            resolved = f.resolve()  # a symlink out of the workspace is not followed
            if resolved.is_relative_to(self.root) and resolved.is_file():
                files.append(str(resolved))
        return files


def dicts(
    con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
