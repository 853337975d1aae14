"""The request cache: every response, keyed by what changes the answer, in the workspace DB.

Table `llm_cache` in `<workspace>/assay.duckdb` (created here, beside the run store's
tables): request_key, model, request (JSON text: model, messages, params, schema,
tools, sample index, and who answered: endpoint and weights fingerprint; never API keys or
headers), response (JSON text), created_at.

Writes go through the run store's own connection on the event loop thread (DuckDB
connections are not thread-safe and the workspace has one writer). Responses are written
in groups, one transaction each ("group commit"): the client closes a group at one answer
per concurrency slot, at FLUSH_EVERY_S after its first answer, or at a batch's last answer,
so the commit cost (4-10 ms of CPU, whatever the group's size) is shared when traffic is
high. Before a response joins a group it is appended to the workspace's response journal
(journal.py), so a process killed at any moment loses only the requests still in flight;
journals a dead process left are folded in when the workspace is opened. The same transaction
appends the requests' rows to the run's `request_log`.

The table has no primary key and is append-only: DuckDB's `insert or replace` on a keyed
table cost ~3 ms of CPU per row (measured); an Arrow insert of 16 rows plus its commit
costs ~3-5 ms, most of it the commit. A key stored twice (after `--no-cache`) resolves to its
newest response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from assay.curate.llm import journal as journals
from assay.curate.llm.types import ChatRequest, ChatResponse

log = logging.getLogger("assay.llm")

SCHEMA = """
create table if not exists llm_cache (
    request_key varchar, model varchar, request varchar, response varchar, created_at timestamp);
"""

# the longest a stored response waits for others to share its commit (answers are in the
# journal, safe from a kill, meanwhile; a power cut loses at most this long of answers)
FLUSH_EVERY_S = 0.5

_STORED = ("text", "reasoning", "tool_calls", "finish_reason", "input_tokens", "output_tokens")
_STORED += ("cost", "latency_s")


def request_json(request: ChatRequest, answered_by: dict[str, Any] | None = None) -> str:
    """What is stored of a request: exactly what the key hashes (no secrets exist in it)."""
    payload = {
        "model": request.model,
        "messages": request.messages,
        "params": request.params,
        "response_format": request.response_format,
        "tools": request.tools,
        "sample_index": request.sample_index,
    }
    if answered_by:
        payload["answered_by"] = answered_by
    return json.dumps(payload, ensure_ascii=False, default=str)


def response_json(response: ChatResponse) -> str:
    return json.dumps({k: getattr(response, k) for k in _STORED}, ensure_ascii=False)


def response_from_json(blob: str) -> ChatResponse:
    data = json.loads(blob)
    return ChatResponse(**{k: data.get(k) for k in _STORED if k in data}, cached=True)


class LogRow:
    """One request_log row (the run store's table, summed per stage by `assay show`)."""

    __slots__ = ("values",)

    def __init__(
        self,
        run_id: str,
        stage_index: int,
        key: str,
        model: str,
        response: ChatResponse,
    ) -> None:
        self.values = [
            run_id,
            stage_index,
            key,
            model,
            response.cached,
            response.input_tokens,
            response.output_tokens,
            0.0 if response.cached else response.cost,
            response.latency_s,
            response.error,
            _now(),
        ]


class RequestCache:
    """Lookups and group-committed writes over one DuckDB connection (one event loop)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, workspace: Path | None = None) -> None:
        self.con = con
        self.con.execute(SCHEMA)
        # without a workspace (a bare connection) responses are durable at commit only
        self.workspace = workspace
        self._journal: journals.Journal | None = None
        self.replayed = 0  # responses recovered from a dead process's journal
        self.commits = 0
        self._rows: list[list[Any]] = []
        self._logs: list[list[Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        if workspace is not None:
            self.replay()

    def replay(self) -> int:
        """Fold the journals dead processes left into DuckDB (one transaction); delete them."""
        assert self.workspace is not None
        files = journals.leftovers(self.workspace)
        rows: list[list[Any]] = []
        logs: list[list[Any]] = []
        for path in files:
            more_rows, more_logs = journals.read_rows(path)
            rows += more_rows
            logs += more_logs
        if rows:
            rows, logs = self._not_committed(rows, logs)
            self._write(rows, logs)
            log.info("recovered %d responses from an interrupted run's journal", len(rows))
        for path in files:
            path.unlink(missing_ok=True)
        self.replayed += len(rows)
        return len(rows)

    def _not_committed(
        self, rows: list[list[Any]], logs: list[list[Any]]
    ) -> tuple[list[list[Any]], list[list[Any]]]:
        """Drop journaled rows whose group had committed before the process died."""
        keys = list({r[0] for r in rows})
        stored = self.con.execute(
            "select request_key, created_at from llm_cache "
            "where request_key in (select unnest(?::varchar[]))",
            [keys],
        ).fetchall()
        done = set(stored)
        fresh = [r for r in rows if (r[0], r[4]) not in done]
        kept = {r[0] for r in fresh}
        return fresh, [g for g in logs if g[2] in kept]

    def get_many(self, keys: list[str]) -> dict[str, ChatResponse]:
        """Stored responses for the keys that have one (one query for the whole list)."""
        if not keys:
            return {}
        found: dict[str, ChatResponse] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 5000):
            chunk = unique[start : start + 5000]
            rows = self.con.execute(
                "select request_key, arg_max(response, created_at) from llm_cache "
                "where request_key in (select unnest(?::varchar[])) group by request_key",
                [chunk],
            ).fetchall()
            for key, blob in rows:
                found[key] = response_from_json(blob)
        return found

    def log_now(self, logs: list[LogRow]) -> None:
        """Append request_log rows for cache hits (one transaction)."""
        if logs:
            self._write([], [r.values for r in logs])

    async def put(
        self,
        request: ChatRequest,
        key: str,
        response: ChatResponse,
        log: LogRow | None,
        max_pending: int = 1,
        answered_by: dict[str, Any] | None = None,
    ) -> None:
        """Store a response (and its log row); returns once the transaction committed.

        A commit costs milliseconds (DuckDB syncs its WAL), so responses are grouped: the
        write happens once `max_pending` responses wait, or `FLUSH_EVERY_S` after the
        first of them, whichever comes first.
        """
        if response.error is None:
            row = [
                key,
                request.model,
                request_json(request, answered_by),
                response_json(response),
                _now(),
            ]
            if self.workspace is not None:
                if self._journal is None:
                    self._journal = journals.Journal(self.workspace)
                    weakref.finalize(self, self._journal.close)
                # durable against a kill from here on: the answer is never bought again
                self._journal.append(row, log.values if log is not None else None)
            self._rows.append(row)
        if log is not None:
            self._logs.append(log.values)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        if len(self._waiters) >= max_pending:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._flush)
        elif self._timer is None and not self._scheduled:
            self._timer = loop.call_later(FLUSH_EVERY_S, self._flush)
        await waiter

    def _flush(self) -> None:
        rows, logs, waiters = self._rows, self._logs, self._waiters
        self._rows, self._logs, self._waiters = [], [], []
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not waiters:
            return
        try:
            if self._journal is not None:
                self._journal.sync()
            self._write(rows, logs)
            if self._journal is not None and not self._rows:
                self._journal.committed()
        except BaseException as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            return
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _write(self, rows: list[list[Any]], logs: list[list[Any]]) -> None:
        con = self.con
        con.begin()
        try:
            if rows:
                con.register("_llm_cache_rows", _cache_table(rows))
                con.execute("insert into llm_cache select * from _llm_cache_rows")
                con.unregister("_llm_cache_rows")
            if logs:
                con.register("_llm_log_rows", _log_table(logs))
                con.execute("insert into request_log select * from _llm_log_rows")
                con.unregister("_llm_log_rows")
            con.commit()
        except BaseException:
            con.rollback()
            raise
        self.commits += 1

    def clear(self, model: str | None = None) -> int:
        """Delete stored responses (of one model, or all); return how many."""
        where, params = ("where model = ?", [model]) if model else ("", [])
        row = self.con.execute(f"select count(*) from llm_cache {where}", params).fetchone()
        self.con.execute(f"delete from llm_cache {where}", params)
        return int(row[0]) if row else 0

    def count(self) -> int:
        row = self.con.execute("select count(*) from llm_cache").fetchone()
        return int(row[0]) if row else 0


def _cache_table(rows: list[list[Any]]) -> pa.Table:
    columns = list(zip(*rows, strict=True))
    return pa.table(
        {
            "request_key": pa.array(columns[0], pa.string()),
            "model": pa.array(columns[1], pa.string()),
            "request": pa.array(columns[2], pa.string()),
            "response": pa.array(columns[3], pa.string()),
            "created_at": pa.array(columns[4], pa.timestamp("us")),
        }
    )


def _log_table(rows: list[list[Any]]) -> pa.Table:
    c = list(zip(*rows, strict=True))
    return pa.table(
        {
            "run_id": pa.array(c[0], pa.string()),
            "stage_index": pa.array(c[1], pa.int32()),
            "request_key": pa.array(c[2], pa.string()),
            "model": pa.array(c[3], pa.string()),
            "cached": pa.array(c[4], pa.bool_()),
            "input_tokens": pa.array(c[5], pa.int64()),
            "output_tokens": pa.array(c[6], pa.int64()),
            "cost": pa.array(c[7], pa.float64()),
            "latency_s": pa.array(c[8], pa.float64()),
            "error": pa.array(c[9], pa.string()),
            "logged_at": pa.array(c[10], pa.timestamp("us")),
        }
    )


_caches: weakref.WeakKeyDictionary[Any, RequestCache] = weakref.WeakKeyDictionary()


def cache_for(store: Any) -> RequestCache:
    """The cache over a RunStore's connection (one per store object)."""
    cache = _caches.get(store)
    if cache is None:
        workspace = None if getattr(store, "read_only", False) else store.workspace
        cache = RequestCache(store.con, workspace)
        _caches[store] = cache
    return cache


def clear_cache(workspace: str | Path = ".assay", model: str | None = None) -> int:
    """`assay cache clear [--model M]`: delete a workspace's stored responses.

    Returns the number of responses deleted. Run logs (`request_log`) are kept: they are
    what was paid for, not a cache.
    """
    from assay.curate.store import RunStore

    with RunStore(workspace) as store:
        return RequestCache(store.con).clear(model)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
