"""The run store: one DuckDB file per workspace (default `./.assay/assay.duckdb`).

Tables:
- `runs`: one row per run (id, name, recipe text, config, status, times, code version).
- `stages`: the stages of each run with their parameters.
- `batches`: a batch of a segment is done once its row is here; written in the same
  transaction as that batch's stage counts, rejects and lineage, so a crash at any moment
  leaves either all of a batch's bookkeeping or none of it.
- `segments`: segments whose every batch is done (the pipeline splits at `needs_fit` stages).
- `stage_batches`: rows in / out / rejected and seconds, per stage and batch.
- `rejects`: row id, stage and reason of every removed row (the rows themselves are Parquet
  shards under the run directory's `rejects/`).
- `lineage`: (id, parent_id) for rows a stage created; the `row_sources` view maps any such
  row to the source row it descends from.
- `request_log`: one row per LLM request a run made or took from the cache (written by the
  LLM layer), summed per stage by `assay show`.
"""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa

from assay import __version__
from assay.curate.arrays import from_values, repeat
from assay.curate.errors import AssayError
from assay.curate.store_reports import RunReports

SCHEMA = """
create table if not exists runs (
    run_id varchar primary key, name varchar, recipe varchar, config json, status varchar,
    started_at timestamp, ended_at timestamp, code_version varchar, run_dir varchar,
    error varchar);
create table if not exists stages (
    run_id varchar, stage_index integer, name varchar, params json,
    primary key (run_id, stage_index));
create table if not exists batches (
    run_id varchar, segment integer, batch integer, rows_in bigint, first_id varchar,
    last_id varchar, checksum varchar, rows_out bigint, committed_at timestamp,
    primary key (run_id, segment, batch));
create table if not exists segments (
    run_id varchar, segment integer, batches integer, completed_at timestamp,
    primary key (run_id, segment));
create table if not exists stage_batches (
    run_id varchar, stage_index integer, segment integer, batch integer,
    rows_in bigint, rows_out bigint, rows_rejected bigint, seconds double);
create table if not exists rejects (
    run_id varchar, row_id varchar, stage_index integer, stage varchar, reason varchar,
    segment integer, batch integer);
create table if not exists lineage (
    run_id varchar, id varchar, parent_id varchar, stage_index integer);
create table if not exists request_log (
    run_id varchar, stage_index integer, request_key varchar, model varchar, cached boolean,
    input_tokens bigint, output_tokens bigint, cost double, latency_s double, error varchar,
    logged_at timestamp);
create or replace view row_sources as
with recursive chain(run_id, id, ancestor, depth) as (
    select run_id, id, parent_id, 1 from lineage
    union all
    select c.run_id, c.id, l.parent_id, c.depth + 1
    from chain c join lineage l on l.run_id = c.run_id and l.id = c.ancestor
    where c.depth < 64)  -- a guard: the executor refuses cycles, a hand-edited store may not
select run_id, id, arg_max(ancestor, depth) as source_id from chain group by run_id, id;
"""


@dataclass
class StageCount:
    """What one stage did to one batch."""

    stage_index: int
    rows_in: int
    rows_out: int
    rows_rejected: int
    seconds: float


class BatchFingerprint(NamedTuple):
    """What a batch's input looked like: a resume checks the source still cuts the same."""

    rows_in: int
    first_id: str | None
    last_id: str | None
    checksum: str | None  # of the batch's content, so an edited row is noticed too


@dataclass
class FinishedBatch:
    """A batch that went through every stage of its segment, waiting to be committed.

    `rejects` has columns row_id, stage_index, stage, reason; `lineage` has id, parent_id,
    stage_index.
    """

    segment: int
    batch: int
    fingerprint: BatchFingerprint
    rows_out: int
    counts: list[StageCount]
    rejects: pa.Table | None = None
    lineage: pa.Table | None = None


def _tag(rejects: pa.Table, segment: int, batch: int) -> pa.Table:
    n = rejects.num_rows
    return rejects.append_column("segment", repeat(segment, n, pa.int32())).append_column(
        "batch", repeat(batch, n, pa.int32())
    )


class UnknownRunError(AssayError):
    pass


LOCK_WAIT_S = 30.0  # how long an open waits for another process to let go of the file


class RunStore(RunReports):
    """The workspace's DuckDB file. Open one per process; it holds DuckDB's write lock.

    DuckDB lets one process at a time open the file; a process that finds it held waits up
    to `lock_wait_s` for the holder to close it (trainers running side by side open it for
    a moment per logged step), then stops with an error naming the file."""

    def __init__(
        self,
        workspace: str | Path = ".assay",
        read_only: bool = False,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.path = self.workspace / "assay.duckdb"
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                self.con = duckdb.connect(
                    str(self.path), read_only=read_only and self.path.exists()
                )
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    raise AssayError(
                        f"cannot open the run store {str(self.path)!r} (is another assay "
                        f"process writing to this workspace?): {exc}"
                    ) from exc
                time.sleep(0.02 + random.random() * 0.05)
        if not read_only or not self.path.exists():
            self.con.execute(SCHEMA)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # runs -----------------------------------------------------------------------------

    def new_run(self, name: str, recipe: str | None, config: dict[str, Any]) -> str:
        run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        run_dir = (self.workspace / "runs" / run_id).resolve()
        run_dir.mkdir(parents=True)
        self.con.execute(
            "insert into runs values (?, ?, ?, ?, 'running', ?, null, ?, ?, null)",
            [run_id, name, recipe, json.dumps(config), _now(), code_version(), str(run_dir)],
        )
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        rows = self._dicts("select * from runs where run_id = ?", [run_id])
        if not rows:
            recent = [r["run_id"] for r in self.runs()[:5]]
            raise UnknownRunError(
                f"no run {run_id!r} in {self.path} (recent runs: {', '.join(recent) or 'none'})"
            )
        row = rows[0]
        row["config"] = json.loads(row["config"]) if row["config"] else {}
        return row

    def runs(self) -> list[dict[str, Any]]:
        return self._dicts(
            """select r.run_id, r.name, r.status, r.started_at, r.ended_at,
                      coalesce(sum(b.rows_out), 0) as rows_out
               from runs r left join batches b on b.run_id = r.run_id
                    and b.segment = (select max(segment) from batches b2 where b2.run_id = r.run_id)
               group by all order by r.started_at desc"""
        )

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        ended = None if status == "running" else _now()
        self.con.execute(
            "update runs set status = ?, ended_at = ?, error = ? where run_id = ?",
            [status, ended, error, run_id],
        )

    def record_stages(self, run_id: str, stages: list[dict[str, Any]]) -> None:
        self.con.execute("delete from stages where run_id = ?", [run_id])
        self.con.executemany(
            "insert into stages values (?, ?, ?, ?)",
            [[run_id, i, s["stage"], json.dumps(s["params"])] for i, s in enumerate(stages)],
        )

    # batches --------------------------------------------------------------------------

    def done_batches(self, run_id: str, segment: int) -> dict[int, BatchFingerprint]:
        """Committed batches of a segment, each with the fingerprint of its input."""
        rows = self.con.execute(
            "select batch, rows_in, first_id, last_id, checksum from batches "
            "where run_id = ? and segment = ?",
            [run_id, segment],
        ).fetchall()
        return {r[0]: BatchFingerprint(*r[1:]) for r in rows}

    def commit_batches(self, run_id: str, batches: list[FinishedBatch]) -> None:
        """Record finished batches atomically: counts, rejects, lineage and done markers.

        One transaction for several batches: a commit costs an fsync (~10 ms here), so the
        executor groups the batches that finish close together.
        """
        if not batches:
            return
        # Arrow inserts: an executemany runs one statement per row (~1 ms each here)
        counts = pa.table(
            {
                "stage_index": from_values(
                    [c.stage_index for f in batches for c in f.counts], pa.int32()
                ),
                "segment": from_values([f.segment for f in batches for _ in f.counts], pa.int32()),
                "batch": from_values([f.batch for f in batches for _ in f.counts], pa.int32()),
                "rows_in": from_values([c.rows_in for f in batches for c in f.counts], pa.int64()),
                "rows_out": from_values(
                    [c.rows_out for f in batches for c in f.counts], pa.int64()
                ),
                "rows_rejected": from_values(
                    [c.rows_rejected for f in batches for c in f.counts], pa.int64()
                ),
                "seconds": from_values(
                    [c.seconds for f in batches for c in f.counts], pa.float64()
                ),
            }
        )
        now = _now()
        done = pa.table(
            {
                "segment": from_values([f.segment for f in batches], pa.int32()),
                "batch": from_values([f.batch for f in batches], pa.int32()),
                "rows_in": from_values([f.fingerprint.rows_in for f in batches], pa.int64()),
                "first_id": from_values([f.fingerprint.first_id for f in batches], pa.string()),
                "last_id": from_values([f.fingerprint.last_id for f in batches], pa.string()),
                "checksum": from_values([f.fingerprint.checksum for f in batches], pa.string()),
                "rows_out": from_values([f.rows_out for f in batches], pa.int64()),
                "committed_at": from_values([now] * len(batches), pa.timestamp("us")),
            }
        )
        rejects = [_tag(f.rejects, f.segment, f.batch) for f in batches if f.rejects is not None]
        lineage = [f.lineage for f in batches if f.lineage is not None]
        con = self.con
        con.begin()
        try:
            self._insert(
                "insert into stage_batches select ?, stage_index, segment, batch, rows_in, "
                "rows_out, rows_rejected, seconds from _t",
                counts,
                run_id,
            )
            if rejects:
                self._insert(
                    "insert into rejects select ?, row_id, stage_index, stage, reason, "
                    "segment, batch from _t",
                    pa.concat_tables(rejects),
                    run_id,
                )
            if lineage:
                self._insert(
                    "insert into lineage select ?, id, parent_id, stage_index from _t",
                    pa.concat_tables(lineage),
                    run_id,
                )
            self._insert(
                "insert into batches select ?, segment, batch, rows_in, first_id, last_id, "
                "checksum, rows_out, committed_at from _t",
                done,
                run_id,
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise

    def _insert(self, sql: str, table: pa.Table, run_id: str) -> None:
        """Run `sql` (reading the Arrow table as `_t`, `?` the run id) inside the open
        transaction."""
        self.con.register("_t", table)
        try:
            self.con.execute(sql, [run_id])
        finally:
            self.con.unregister("_t")

    def complete_segment(self, run_id: str, segment: int, batches: int) -> None:
        self.con.execute(
            "insert or replace into segments values (?, ?, ?, ?)",
            [run_id, segment, batches, _now()],
        )

    def segment_rows(self, run_id: str, segment: int) -> int:
        """Rows out of a segment's committed batches."""
        row = self.con.execute(
            "select coalesce(sum(rows_out), 0) from batches where run_id = ? and segment = ?",
            [run_id, segment],
        ).fetchone()
        return int(row[0]) if row else 0

    def segment_complete(self, run_id: str, segment: int) -> bool:
        row = self.con.execute(
            "select count(*) from segments where run_id = ? and segment = ?", [run_id, segment]
        ).fetchone()
        return bool(row and row[0])

    def source_of(self, run_id: str, row_id: str) -> str:
        """The id of the source row that `row_id` descends from."""
        row = self.con.execute(
            "select source_id from row_sources where run_id = ? and id = ?", [run_id, row_id]
        ).fetchone()
        return row[0] if row else row_id


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def code_version() -> str:
    """assay's version, plus the git commit when running from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__
