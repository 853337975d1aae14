"""SqlExecutionVerifier and the read-only guard: adversarial SQL is refused unrun, a query
that runs forever is interrupted, equivalent queries are equal, different ones are not."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from assay.judges.sql import (
    SqlExecutionVerifier,
    SqlRunError,
    UnsafeSqlError,
    check_read_only,
    open_read_only,
    run_read_only,
)


@pytest.fixture
def database(tmp_path: Path) -> str:
    path = tmp_path / "people.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE people (id INTEGER, name VARCHAR, team_id INTEGER)")
        con.execute("CREATE TABLE teams (team_id INTEGER, team VARCHAR, budget DOUBLE)")
        con.execute(
            "INSERT INTO people VALUES (1, 'ada', 10), (2, 'bob', 10), (3, 'cy', 20), (4, 'di', 30)"
        )
        con.execute(
            "INSERT INTO teams VALUES (10, 'red', 1.5), (20, 'blue', 2.25), (30, 'green', 3)"
        )
    return str(path)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE people", "DROP statements are not allowed"),
        ("DELETE FROM people", "DELETE statements are not allowed"),
        ("COPY people TO 'out.csv'", "COPY statements are not allowed"),
        ("ATTACH 'other.duckdb' AS o", "ATTACH statements are not allowed"),
        ("INSTALL httpfs", "LOAD statements are not allowed"),
        ("LOAD httpfs", "LOAD statements are not allowed"),
        ("SET threads = 1", "SET statements are not allowed"),
        ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv"),
        ("SELECT * FROM read_parquet('x.parquet')", "table function read_parquet"),
        ("SELECT * FROM glob('/etc/*')", "table function glob"),
        ("SELECT * FROM '/etc/passwd'", "is not a table of this database"),
        ("SELECT getenv('HOME')", "function getenv"),
        ("SELECT 1; DROP TABLE people", "expected one statement, got 2"),
        (
            "WITH x AS (SELECT * FROM read_text('/etc/hosts')) SELECT * FROM x",
            "table function read_text",
        ),
        ("SELEC 1", "cannot parse SQL"),
    ],
)
def test_the_guard_refuses_writes_files_settings_and_several_statements(
    sql: str, reason: str
) -> None:
    with pytest.raises(UnsafeSqlError, match=reason):
        check_read_only(sql)


def test_refused_sql_is_never_run(database: str) -> None:
    con = open_read_only(database)
    with pytest.raises(UnsafeSqlError):
        run_read_only(con, "SELECT 1; DROP TABLE people")
    assert con.execute("SELECT COUNT(*) FROM people").fetchone() == (4,)
    # the connection itself is read-only and cannot reach files (defence in depth)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DROP TABLE people")
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        con.execute("SELECT * FROM read_csv('/etc/passwd')")


def test_a_query_that_runs_forever_is_interrupted_by_the_timeout(database: str) -> None:
    con = open_read_only(database)
    start = time.perf_counter()
    with pytest.raises(SqlRunError, match="timeout"):
        run_read_only(con, "SELECT COUNT(*) FROM range(1000000000000) a", timeout_s=0.5)
    assert time.perf_counter() - start < 30  # it stopped (a full scan takes hours)
    assert con.execute("SELECT 1").fetchone() == (1,)  # the connection is usable again


def test_the_row_limit_is_enforced(database: str) -> None:
    with pytest.raises(SqlRunError, match="row limit"):
        run_read_only(open_read_only(database), "SELECT * FROM range(100)", row_limit=10)


def verify(database: str, pairs: list[tuple[str, str]]) -> pa.Table:
    table = pa.table(
        {
            "id": [str(i) for i in range(len(pairs))],
            "generation": [c for c, _ in pairs],
            "gold_sql": [g for _, g in pairs],
        }
    )
    out = SqlExecutionVerifier(database=database, drop_incorrect=False).process(table)
    assert isinstance(out, pa.Table)
    return out


def test_equivalent_queries_match(database: str) -> None:
    gold = "SELECT p.name, t.team FROM people p JOIN teams t ON p.team_id = t.team_id"
    pairs = [
        # join order and aliases
        ("SELECT x.name, y.team FROM teams y JOIN people x ON y.team_id = x.team_id", gold),
        # COUNT(*) vs COUNT(id), column alias
        ("SELECT COUNT(id) AS n FROM people", "SELECT COUNT(*) FROM people"),
        # row order ignored without ORDER BY in the gold query; answer in a ```sql block
        ("```sql\nSELECT name FROM people ORDER BY name DESC;\n```", "SELECT name FROM people"),
        # numeric tolerance and int vs float
        ("SELECT SUM(budget) FROM teams", "SELECT 6.75"),
        ("SELECT 3", "SELECT 3.0000000001"),
    ]
    out = verify(database, pairs)
    assert out["correct"].to_pylist() == [True] * len(pairs), out["correct_reason"].to_pylist()


def test_different_queries_do_not_match(database: str) -> None:
    pairs = [
        ("SELECT name FROM people WHERE team_id = 10", "SELECT name FROM people"),
        ("SELECT name FROM people ORDER BY name DESC", "SELECT name FROM people ORDER BY name"),
        ("SELECT name, id FROM people", "SELECT name FROM people"),
        ("SELECT 3.1", "SELECT 3"),
        ("SELECT * FROM nowhere", "SELECT 1"),
        ("DROP TABLE people", "SELECT COUNT(*) FROM people"),
    ]
    out = verify(database, pairs)
    assert out["correct"].to_pylist() == [False] * len(pairs)
    reasons = out["correct_reason"].to_pylist()
    assert reasons[0].startswith("different results: 2 rows, gold has 4")
    assert "row 0 differs" in reasons[1]  # the gold query orders, so order matters
    assert "2 columns, gold has 1" in reasons[2]
    assert reasons[4].startswith("candidate failed:") and "nowhere" in reasons[4]
    assert reasons[5].startswith("unsafe SQL: DROP")
    assert out["correct_score"].to_pylist() == [0.0] * len(pairs)


def test_misses_go_to_the_rejects_and_reward_scores(database: str) -> None:
    table = pa.table(
        {
            "id": ["a", "b"],
            "generation": ["SELECT COUNT(*) FROM people", "SELECT 7"],
            "gold_sql": ["SELECT 4", "SELECT 4"],
        }
    )
    verifier = SqlExecutionVerifier(database=database)
    outcome = verifier.process(table)
    assert outcome.kept["id"].to_pylist() == ["a"]
    assert outcome.rejected["id"].to_pylist() == ["b"]
    scores = verifier.reward(
        ["q", "q"],
        ["SELECT 4", [{"role": "assistant", "content": "SELECT 5"}]],
        gold_sql=["SELECT COUNT(*) FROM people", "SELECT 4"],
    )
    assert scores == [1.0, 0.0]


def test_batches_in_worker_threads_get_their_own_connection(database: str, tmp_path) -> None:
    import threading

    from assay.curate.executors.local import LocalExecutor
    from assay.curate.pipeline import Pipeline

    verifier = SqlExecutionVerifier(database=database, column="sql", drop_incorrect=False)
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(verifier.connection(database)))
    worker.start()
    worker.join()
    assert seen[0] is not verifier.connection(database)  # never shared between threads

    rows = [{"id": str(i), "sql": f"SELECT {i}", "gold_sql": f"SELECT {i}"} for i in range(40)]
    out = Pipeline([verifier]).run(
        rows, workspace=tmp_path / "ws", progress="quiet", executor=LocalExecutor(4, cpu_workers=2)
    )
    assert out.to_arrow()["correct"].to_pylist() == [True] * 40


def test_test_suite_catches_a_query_that_matches_the_gold_by_chance(
    database: str, tmp_path: Path
) -> None:
    """On `people.duckdb` team 40 has no one, so a wrong filter that returns nobody matches
    the gold's 0; a second database where team 40 has a member tells them apart."""
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE people (id INTEGER, name VARCHAR, team_id INTEGER)")
        con.execute("INSERT INTO people VALUES (1, 'ada', 40), (2, 'bob', 10)")
    gold = "SELECT COUNT(*) FROM people WHERE team_id = 40"
    wrong = "SELECT COUNT(*) FROM people WHERE name = 'nobody'"
    single = SqlExecutionVerifier(database=database)
    suite = SqlExecutionVerifier(database=database, test_suite=[str(other)])

    assert single.check(wrong, gold, {}).correct  # the false positive one database allows
    verdict = suite.check(wrong, gold, {})
    assert not verdict.correct
    assert "test-suite database 1 (other.duckdb)" in verdict.reason
    assert "got (0.0,), gold (1.0,)" in verdict.reason
    right = suite.check("SELECT COUNT(id) FROM people WHERE team_id = 40", gold, {})
    assert right.correct and right.reason.endswith("on 2 databases")
