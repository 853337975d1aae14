"""The run store's reports: what `assay show`, the run report and the viewer read back.

`RunReports` is the read side of `RunStore` (store.py), kept apart from the writes that
make a run crash-safe; it needs only the open DuckDB connection, `self.con`.
"""

from __future__ import annotations

from typing import Any


class RunReports:
    """Queries over the run tables (`stages`, `stage_batches`, `request_log`, `rejects`)."""

    con: Any  # the store's duckdb.DuckDBPyConnection

    def funnel(self, run_id: str) -> list[dict[str, Any]]:
        """Per stage: rows in, out, rejected, seconds, and LLM requests, tokens and cost."""
        return self._dicts(
            """select s.stage_index, s.name,
                      coalesce(sum(b.rows_in), 0) as rows_in,
                      coalesce(sum(b.rows_out), 0) as rows_out,
                      coalesce(sum(b.rows_rejected), 0) as rows_rejected,
                      coalesce(sum(b.seconds), 0) as seconds,
                      any_value(u.requests) as requests, any_value(u.cached) as cached,
                      any_value(u.failed) as failed,
                      any_value(u.input_tokens) as input_tokens,
                      any_value(u.output_tokens) as output_tokens, any_value(u.cost) as cost
               from stages s
               left join stage_batches b on b.run_id = s.run_id and b.stage_index = s.stage_index
               left join (
                   select stage_index, count(*) as requests,
                          count(*) filter (where cached) as cached,
                          count(*) filter (where error is not null) as failed,
                          sum(input_tokens) as input_tokens,
                          sum(output_tokens) as output_tokens, sum(cost) as cost
                   from request_log where run_id = ? group by stage_index
               ) u on u.stage_index = s.stage_index
               where s.run_id = ?
               group by s.stage_index, s.name order by s.stage_index""",
            [run_id, run_id],
        )

    def reject_reasons(self, run_id: str, limit_per_stage: int = 5) -> list[dict[str, Any]]:
        return self._dicts(
            """with counted as (
                   -- reasons carry per-row detail ("duplicate of <id> (...)",
                   -- "wrong answer (got 3, gold 4)"): summaries group them without it
                   select stage_index, stage,
                          regexp_replace(regexp_replace(reason, ' of \S+.*$', ' of ...'),
                                         ' \(.*\)$', ' (...)') as reason,
                          count(*) as n
                   from rejects where run_id = ? group by all)
               select stage_index, stage, reason, n from (
                   select *, row_number() over (
                       partition by stage_index order by n desc, reason) as k
                   from counted)
               where k <= ? order by stage_index, n desc, reason""",
            [run_id, limit_per_stage],
        )

    def _dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
