"""SqlEnvironment: answer a question about a DuckDB database with three tools.

The tools teach the discipline of Snorkel's FinQA environment: look at the tables and their
columns (`list_tables`, `describe_table`) before querying (`run_query`). Queries pass the same
guard as SqlExecutionVerifier (`check_read_only`: one SELECT, no files, no settings) and run
on a read-only connection with a timeout and a row limit.

An episode is scored by its final answer and by its discipline:
- answer: the final answer states every value of the gold result (numbers within 1e-6
  relative; digits glued to a word, `customer_40`, state no number); a gold result over 10
  cells, or an episode without a final answer (TRL's loop), must instead be what the last
  query returned; with `answer_from_result` the last query must return the gold result too;
- discipline: `list_tables` or `describe_table` was called before the first `run_query`.
`reward = 0.7 * answer + 0.3 * discipline`; `correct` is the answer check.

Databases: a DuckDB path, or a name from `DATABASES`: `shop` (the default: a seeded shop
with unobvious column names, sql_demo.py) or `intern_sql` (the intern task's racing results,
`assay.datasets.intern_sql.default_database()`; its questions: `intern_tasks()`).

Task rows: `question` (string), `gold_sql` (string); `database` (a path or a name) overrides
the environment's database for that row.

`answer_tool=True` offers a fourth tool, `final_answer(answer)` (smolagents' convention): the
episode ends when it is called, and its argument is the final answer. A small model that
writes tool-call text where it should answer in prose (SmolLM2-135M copies the conversation's
`<tool_call>` pattern) can then be forced to answer with it.

`schema_constrained=True` writes the database into the tool schemas: `describe_table`'s
`table` becomes an enum of the tables, `run_query`'s `sql` a pattern of single-table SELECTs
over the real tables and columns (sql_grammar.py, PICARD's idea). Constrained decoding on the
local backend enforces both (an API model reads them as JSON schema), so a small model's calls
name real tables and parse; the prompt shows the enum but not the long pattern.

`answer_from_result=True` (with `answer_tool`) constrains `final_answer`'s `answer`, once a
query has returned at most 10 cells, to those cells written out (`40`; `Lyon, 12`): the
answer restates what the query returned, so an episode is correct exactly when its last query
returned the gold result, text-to-SQL's execution accuracy (Spider, BIRD). A small model that
writes the right query but not the number it got back then makes a trajectory whose answer
is the query's, a well-formed one to train on. The prompt does not show the pattern.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import duckdb

from assay.judges.sql import (
    QueryResult,
    SqlRunError,
    UnsafeSqlError,
    _cell,
    _cells_equal,
    is_ordered,
    open_read_only,
    run_read_only,
    same_results,
)
from assay.operators.tools.api import tool
from assay.operators.tools.environment import EpisodeScore, ToolEnvironment
from assay.operators.tools.sql_grammar import select_pattern

DATABASES = ("shop", "intern_sql")

# a number not glued to a word before it ("customer_40" names a customer, it states no 40)
_NUMBER = re.compile(r"(?<![A-Za-z_\d])-?\d[\d,]*(?:\.\d+)?")
INSTRUCTIONS = (
    "Answer the question using the database tools. First call list_tables and describe_table "
    "to see the tables and their columns, then run_query with one SELECT. When you have the "
    "result, reply with the answer in a short sentence."
)


def resolve_database(database: str | Path | None) -> str:
    """A DuckDB path for `database`: None or "shop" is the seeded shop, "intern_sql" the
    intern task's database (seed 0; "intern_sql:<seed>" another seed), anything else a path."""
    name = str(database) if database is not None else "shop"
    if name == "shop":
        from assay.operators.tools.sql_demo import demo_database

        return str(demo_database())
    base, _, seed = name.partition(":")
    if base == "intern_sql" and (not seed or seed.isdigit()):
        from assay.datasets.intern_sql import default_database

        return str(default_database(int(seed or 0)))
    return name


def intern_tasks(
    split: str = "train", limit: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Task rows over the `intern_sql` database: `id`, `question`, `gold_sql`, `template`,
    `database` ("intern_sql" or "intern_sql:<seed>"), from the intern task's questions."""
    from assay.datasets.intern_sql.questions import questions

    database = "intern_sql" if seed == 0 else f"intern_sql:{seed}"
    return [
        {
            "id": row["id"],
            "question": row["question"],
            "gold_sql": row["gold_sql"],
            "template": row["template"],
            "database": database,
        }
        for row in questions(split, limit=limit, seed=seed)
    ]


class SqlEnvironment(ToolEnvironment):
    """A DuckDB database behind `list_tables`, `describe_table` and `run_query`.

    `database`: a DuckDB path or a name, "shop" (default) or "intern_sql" (see
    `resolve_database`)."""

    def __init__(
        self,
        database: str | Path | None = None,
        timeout_s: float = 5.0,
        row_limit: int = 1000,
        shown_rows: int = 20,
        schema_constrained: bool = False,
        answer_tool: bool = False,
        answer_from_result: bool = False,
    ) -> None:
        super().__init__()
        if answer_from_result and not answer_tool:
            raise ValueError("answer_from_result constrains final_answer: set answer_tool too")
        self.database = resolve_database(database)
        self.schema_constrained = schema_constrained
        self.answer_tool = answer_tool
        self.answer_from_result = answer_from_result
        self._constrained_schemas: dict[str, list[dict[str, Any]]] = {}  # by database
        self.timeout_s = timeout_s
        self.row_limit = row_limit
        self.shown_rows = shown_rows
        self._con: duckdb.DuckDBPyConnection | None = None
        self._con_path = ""
        self.question = ""
        self.gold_sql = ""
        self.gold: QueryResult | None = None
        self.events: list[str] = []
        self.last_result: QueryResult | None = None
        self.answer: str | None = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None or self._con_path != self.database:
            self._con = open_read_only(self.database)
            self._con_path = self.database
        return self._con

    def reset(self, row: dict[str, Any]) -> str:
        super().__init__()
        if row.get("database"):
            self.database = resolve_database(row["database"])
        self.question = str(row.get("question") or "")
        if not self.question:
            raise ValueError(f"task row {row.get('id')!r} has no question")
        self.gold_sql = str(row.get("gold_sql") or "")
        self.gold = (
            run_read_only(self.con, self.gold_sql, self.timeout_s, self.row_limit)
            if self.gold_sql
            else None
        )
        self.events, self.last_result, self.answer = [], None, None
        return f"{INSTRUCTIONS}\n\nQuestion: {self.question}"

    def tools(self) -> dict[str, Any]:
        """The tools; `final_answer` only with `answer_tool`."""
        found = super().tools()
        if not self.answer_tool:
            found.pop("final_answer", None)
        return found

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The tool schemas; with `schema_constrained`, the database's tables as an enum of
        `describe_table` and its single-table SELECTs as the pattern of `run_query`; with
        `answer_from_result`, the last query's cells as the pattern of `final_answer`."""
        schemas = self._database_schemas()
        pattern = self._result_pattern() if self.answer_from_result else None
        if pattern is None:
            return schemas
        schemas = list(schemas)
        for i, schema in enumerate(schemas):
            if schema.get("function", schema)["name"] == "final_answer":
                schemas[i] = copy.deepcopy(schema)
                function = schemas[i].get("function", schemas[i])
                function["parameters"]["properties"]["answer"]["pattern"] = pattern
        return schemas

    def _result_pattern(self) -> str | None:
        """The last query's cells joined by ", " as an anchored literal pattern; None before
        a query succeeds, past 10 cells, or where a cell would need escaping in JSON."""
        if self.last_result is None:
            return None
        cells = [str(v) for row in self.last_result.rows for v in row]
        if not cells or len(cells) > 10:
            return None
        text = ", ".join(cells)
        if any(c in text for c in '"\\') or any(ord(c) < 0x20 for c in text):
            return None
        return "^" + re.sub(r"([.^$|?*+()\[\]{}\-])", r"\\\1", text) + "$"

    def _database_schemas(self) -> list[dict[str, Any]]:
        if not self.schema_constrained:
            return super().tool_schemas()
        if self.database not in self._constrained_schemas:
            tables: dict[str, list[str]] = {}
            for table, column in self.con.execute(
                "SELECT table_name, column_name FROM duckdb_columns() WHERE NOT internal "
                "ORDER BY table_name, column_index"
            ).fetchall():
                tables.setdefault(table, []).append(column)
            schemas = copy.deepcopy(super().tool_schemas())
            for schema in schemas:
                function = schema.get("function", schema)
                properties = function["parameters"]["properties"]
                if function["name"] == "describe_table":
                    properties["table"]["enum"] = sorted(tables)
                elif function["name"] == "run_query":
                    properties["sql"]["pattern"] = select_pattern(tables)
            self._constrained_schemas[self.database] = schemas
        return self._constrained_schemas[self.database]

    # --- tools -------------------------------------------------------------------------

    @tool
    def list_tables(self) -> str:
        """List the tables of the database.

        Returns:
            The table names, one per line.
        """
        self.events.append("list_tables")
        rows = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY table_name"
        ).fetchall()
        return "\n".join(r[0] for r in rows) or "(no tables)"

    @tool
    def describe_table(self, table: str) -> str:
        """Show the columns of one table with their types and comments.

        Args:
            table: The name of the table, as list_tables gives it.

        Returns:
            One line per column: name, type and comment.
        """
        self.events.append("describe_table")
        rows = self.con.execute(
            "SELECT column_name, data_type, comment FROM duckdb_columns() "
            "WHERE NOT internal AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
        if not rows:
            raise ValueError(f"no table named {table!r}; call list_tables to see the tables")
        return "\n".join(f"{n} {t}" + (f" -- {c}" if c else "") for n, t, c in rows)

    @tool
    def run_query(self, sql: str) -> str:
        """Run one read-only SELECT query on the database.

        Args:
            sql: One DuckDB SELECT statement.

        Returns:
            The column names and up to 20 rows, or an error.
        """
        self.events.append("run_query")
        try:
            result = run_read_only(self.con, sql, self.timeout_s, self.row_limit)
        except (UnsafeSqlError, SqlRunError) as exc:
            raise ValueError(str(exc)) from None
        self.last_result = result
        lines = [" | ".join(result.columns)]
        lines += [" | ".join(str(v) for v in row) for row in result.rows[: self.shown_rows]]
        if len(result.rows) > self.shown_rows:
            lines.append(f"... {len(result.rows)} rows in all")
        return "\n".join(lines)

    @tool
    def final_answer(self, answer: str) -> str:
        """Give the final answer to the question; this ends the episode.

        Args:
            answer: The answer to the question, stating the value the query returned.

        Returns:
            A confirmation.
        """
        self.events.append("final_answer")
        self.answer = answer
        self.done = True
        return "Answer recorded."

    # --- grading -----------------------------------------------------------------------

    def end_turn(self, answer: str | None) -> str | None:
        self.answer = answer
        self.done = True
        return None

    def inspected_before_query(self) -> bool:
        first_query = self.events.index("run_query") if "run_query" in self.events else None
        looked = [i for i, e in enumerate(self.events) if e in ("list_tables", "describe_table")]
        return bool(looked) and (first_query is None or looked[0] < first_query)

    def answer_check(self) -> tuple[bool, str]:
        """The final answer must state the gold values; a gold result too big to state
        (over 10 cells) must be what the last successful query returned. With
        `answer_from_result`, the last query must also have returned the gold result."""
        if self.gold is None:
            return False, "no gold SQL for this task"
        # execution accuracy: an answer restating the last query needs that query right
        if self.answer_from_result and self.answer is not None and not self._last_result_is_gold():
            return False, "the last query did not return the gold result"
        cells = [_cell(v) for row in self.gold.rows for v in row]
        # no final answer seen (TRL's loop ends without telling the environment): the last
        # query's result is the answer
        if not cells or len(cells) > 10 or self.answer is None:
            if self._last_result_is_gold():
                return True, "the last query returned the gold result"
            return False, "the last query did not return the gold result"
        text = self.answer or ""
        numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(text)]
        missing = []
        for cell in cells:
            if isinstance(cell, float):
                if not any(_cells_equal(n, cell, 1e-6, 1e-9) for n in numbers):
                    missing.append(cell)
            elif cell is not None and str(cell).lower() not in text.lower():
                missing.append(cell)
        if missing:
            return False, f"the answer does not state {missing!r}"
        return True, "the answer states the gold result"

    def _last_result_is_gold(self) -> bool:
        if self.last_result is None or self.gold is None:
            return False
        return same_results(self.last_result.rows, self.gold.rows, is_ordered(self.gold_sql))[0]

    def final_state(self) -> dict[str, Any]:
        return {
            "tool_sequence": list(self.events),
            "inspected_before_query": self.inspected_before_query(),
            "last_result": [list(map(str, r)) for r in self.last_result.rows[:20]]
            if self.last_result
            else None,
            "answer": self.answer,
        }

    def score(self) -> EpisodeScore:
        answered, detail = self.answer_check()
        disciplined = self.inspected_before_query()
        checks = [
            {"turn": 0, "check": "answer", "passed": answered, "detail": detail},
            {
                "turn": 0,
                "check": "discipline",
                "passed": disciplined,
                "detail": "inspected the schema before querying"
                if disciplined
                else f"tool order: {', '.join(self.events) or 'no tools'}",
            },
        ]
        return EpisodeScore(0.7 * answered + 0.3 * disciplined, answered, checks)
