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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from assay.curate.errors import AssayError
from assay.curate.store import RunStore

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")


class ViewerError(AssayError):
    """Something the viewer cannot show, with a message a person can act on."""

    status = 400


class NotFound(ViewerError):
    status = 404


class Workspace:
    """One workspace directory (default `.assay`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.db_path = self.root / "assay.duckdb"
        self._lock = threading.Lock()

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection to the run store (read-only unless `write`)."""
        if not self.db_path.exists():
            raise NotFound(f"no run store at {self.db_path}: run a recipe first (assay run ...)")
        with self._lock:
            try:
                con = duckdb.connect(str(self.db_path), read_only=not write)
            except duckdb.IOException as exc:
                raise ViewerError(
                    f"the run store {self.db_path} is busy (an assay run is writing to it); "
                    f"reload when it finishes ({exc})"
                ) from exc
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def store(self) -> Iterator[RunStore]:
        """The run store's own queries (funnel, reject reasons, lineage), read-only."""
        if not self.db_path.exists():
            raise NotFound(f"no run store at {self.db_path}: run a recipe first (assay run ...)")
        with self._lock:
            try:
                store = RunStore(self.root, read_only=True)
            except AssayError as exc:
                raise ViewerError(f"{exc}; reload when the run finishes") from exc
            try:
                yield store
            finally:
                store.close()

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as con:
            return dicts(con, sql, params)

    def tables(self) -> set[str]:
        with self.connect() as con:
            rows = con.execute(
                "select table_name from information_schema.tables where table_schema = 'main'"
            ).fetchall()
        return {r[0] for r in rows}

    # runs and their files ---------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """The folder of a run that exists in the store (refuses any other name)."""
        if not _NAME.match(run_id or ""):
            raise NotFound(f"no run {run_id!r}")
        if not self.query("select 1 from runs where run_id = ?", [run_id]):
            raise NotFound(f"no run {run_id!r} in {self.db_path}")
        path = (self.root / "runs" / run_id).resolve()
        if not path.is_relative_to(self.root):
            raise NotFound(f"no run {run_id!r}")
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
