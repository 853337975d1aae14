"""The response journal: every answer that arrived is on disk before it counts.

Responses reach DuckDB in grouped commits (a commit costs milliseconds, see cache.py); an
answer that arrived after the last commit used to die with the process (kill -9, OOM) and
be bought again on resume. So each response is first appended, as one JSON line, to an
append-only journal file beside the workspace DB (`<workspace>/llm-journal/<pid>-<n>.jsonl`)
with one `os.write`: from then on it survives the process being killed (it is in the
operating system's page cache). The journal is fsynced once per group, just before the
group's DuckDB commit (which syncs DuckDB's own log), so a power cut loses at most the
group in progress, as before. Once a group is committed the journal is emptied.

When a workspace is opened, journals left by a dead process are folded into DuckDB (one
transaction) and deleted; a torn last line (killed mid-write) is skipped. A response
journaled and also committed before the kill is stored twice: harmless, the cache reads
the newest row of a key.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

FOLDER = "llm-journal"
_counter = itertools.count()


class Journal:
    """One process's append-only journal file in a workspace."""

    def __init__(self, workspace: Path) -> None:
        self.folder = workspace / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"{os.getpid()}-{next(_counter)}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._dirty = False

    def append(self, row: list[Any], log: list[Any] | None) -> None:
        """One cache row (and its request_log row): durable against a kill on return."""
        line = json.dumps([row, log], ensure_ascii=False, default=_iso) + "\n"
        os.write(self._fd, line.encode())
        self._dirty = True

    def sync(self) -> None:
        if self._dirty:
            os.fsync(self._fd)

    def committed(self) -> None:
        """Everything journaled so far is in DuckDB: start the file afresh."""
        if self._dirty:
            os.ftruncate(self._fd, 0)
            self._dirty = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            if self.path.stat().st_size == 0:
                self.path.unlink()


def leftovers(workspace: Path) -> list[Path]:
    """Journal files that other (dead: the workspace has one writer) processes left.

    This process's own are never taken: their caches are alive and commit them.
    """
    folder = workspace / FOLDER
    if not folder.is_dir():
        return []
    mine = f"{os.getpid()}-"
    return sorted(p for p in folder.glob("*.jsonl") if not p.name.startswith(mine))


def read_rows(path: Path) -> tuple[list[list[Any]], list[list[Any]]]:
    """(cache rows, request_log rows) of one journal; a torn line is skipped."""
    rows: list[list[Any]] = []
    logs: list[list[Any]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row, log = json.loads(line)
            except (ValueError, TypeError):
                continue  # the line being written when the process died
            row[4] = _from_iso(row[4])
            rows.append(row)
            if log is not None:
                log[-1] = _from_iso(log[-1])
                logs.append(log)
    return rows, logs


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _from_iso(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
