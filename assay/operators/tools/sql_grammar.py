"""SQL constrained to a database's schema, as a JSON-schema `pattern` for a tool argument.

PICARD's idea (Scholak et al., 2021: constrain a text-to-SQL decoder to queries that parse and
name real tables and columns) in the form our decoder already takes: a regular expression on
the `sql` string of `run_query`, which constrained decoding on the local backend enforces token
by token (xgrammar). It admits single-table SELECTs over the database's own names:

    SELECT [DISTINCT] <item>[, <item>]{0,2} FROM <table>
      [WHERE <cond> [AND <cond>]{0,2}] [GROUP BY <col>]
      [ORDER BY <item> [ASC|DESC] [, <item> [ASC|DESC]]] [LIMIT n]
    item: COUNT(*) | COUNT|SUM|AVG|MIN|MAX(<col>) | <col>     cond: <col> <op> <literal>

each table with its own columns. Joins, subqueries, expressions and dates are outside it (a
model that needs them must run unconstrained). Only plain identifiers (letters, digits, `_`)
are offered; a table or column with another name is left out. A small model given this
grammar writes valid queries over the real schema, so what rejection sampling then verifies
is whether it chose the right table, columns and values.
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def bounded(unit: str, low: int, high: int) -> str:
    """`unit{low,high}` spelt out as `unit` x low and nested optionals: xgrammar 0.2.8 turns a
    counted or starred repetition at the end of an optional group into one that skips the
    group's earlier parts (`^ab( L[0-9]{0,2})?$` accepts "ab8"); nested optionals compile
    right (tests/test_tools_sql_env.py checks the whole pattern through xgrammar)."""
    tail = ""
    for _ in range(high - low):
        tail = f"({unit}{tail})?"
    return unit * low + tail


_DIGITS = "[0-9]"
# a literal: a quoted string (no quote, backslash, double quote or control character, so the
# JSON string needs no escapes) or a number
_LITERAL = (
    "('[^'\"\\\\\\x00-\\x1f]{0,40}'"  # a repetition followed by a quote compiles right
    f"|-?{bounded(_DIGITS, 1, 9)}(\\.{bounded(_DIGITS, 1, 4)})?)"
)
_OPERATOR = "(=|!=|<|>|<=|>=)"


def plain_names(names: list[str]) -> list[str]:
    """The names a pattern can offer verbatim (no quoting needed)."""
    return [n for n in names if _IDENTIFIER.match(n)]


def table_pattern(table: str, columns: list[str]) -> str:
    """One table's SELECTs (see the module notes); no anchors."""
    col = "(" + "|".join(plain_names(columns)) + ")"
    item = rf"(COUNT\(\*\)|(COUNT|SUM|AVG|MIN|MAX)\({col}\)|{col})"
    cond = f"{col} {_OPERATOR} {_LITERAL}"
    return (
        f"SELECT (DISTINCT )?{item}(, {item}){{0,2}} FROM {table}"
        f"( WHERE {cond}( AND {cond}){{0,2}})?"
        f"( GROUP BY {col})?"
        f"( ORDER BY {item}( ASC| DESC)?(, {item}( ASC| DESC)?)?)?"
        f"( LIMIT [1-9]{bounded(_DIGITS, 0, 2)})?"
    )


def select_pattern(tables: dict[str, list[str]]) -> str:
    """The anchored pattern of every table's SELECTs; `tables` maps a table to its columns.
    Raises ValueError when no table has a plain name and a plain column."""
    parts = [
        table_pattern(table, columns)
        for table, columns in sorted(tables.items())
        if _IDENTIFIER.match(table) and plain_names(columns)
    ]
    if not parts:
        raise ValueError("no table with a plain name and plain column names to build SQL from")
    return "^(" + "|".join(parts) + ")$"
