"""SqlEnvironment: refuses writes and file access, scores answer and discipline; the tool API
builds the schemas transformers/TRL build; the TRL adapter exposes exactly the tools."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from transformers.utils import get_json_schema

from assay.operators.tools.api import ToolSchemaError, tool_schema
from assay.operators.tools.sql_demo import build_shop, demo_tasks
from assay.operators.tools.sql_env import SqlEnvironment, intern_tasks, resolve_database
from assay.operators.tools.trl import as_trl_environment

TASK = {
    "id": "t",
    "question": "How many customers live in Lyon?",
    "gold_sql": "SELECT COUNT(*) FROM customers WHERE home_city = 'Lyon'",
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_shop(tmp_path_factory.mktemp("db") / "shop.duckdb"))


def run(env: SqlEnvironment, name: str, **arguments: object):
    return env.step({"function": {"name": name, "arguments": json.dumps(arguments)}})


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE customers",
        "INSERT INTO customers VALUES (99, 'x', 'Lyon', 2020)",
        "COPY customers TO 'stolen.csv'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "ATTACH 'other.duckdb'",
        "SELECT 1; DELETE FROM customers",
    ],
)
def test_run_query_refuses_writes_and_file_access(shop: str, sql: str, tmp_path: Path) -> None:
    env = SqlEnvironment(database=shop)
    env.reset(TASK)
    result = run(env, "run_query", sql=sql)
    assert result.error and result.content.startswith("Error:")
    assert not Path("stolen.csv").exists()
    assert env.con.execute("SELECT COUNT(*) FROM customers").fetchone() == (40,)
    assert env.con.execute("SELECT COUNT(*) FROM duckdb_databases()").fetchone()[0] == 3


def test_discipline_and_answer_are_scored(shop: str) -> None:
    env = SqlEnvironment(database=shop)
    env.reset(TASK)
    (gold,) = env.gold.rows[0]
    assert run(env, "list_tables").content.split() == ["customers", "orders", "products"]
    assert "home_city VARCHAR" in run(env, "describe_table", table="customers").content
    assert run(env, "describe_table", table="nope").error
    assert run(env, "run_query", sql=TASK["gold_sql"]).content.splitlines()[-1] == str(gold)
    env.end_turn(f"{gold} customers live in Lyon.")
    score = env.score()
    assert (score.correct, score.reward) == (True, 1.0)

    env.reset(TASK)  # querying first, then a wrong number
    run(env, "run_query", sql=TASK["gold_sql"])
    run(env, "list_tables")
    env.end_turn(f"{gold + 1} customers.")
    score = env.score()
    assert (score.correct, score.reward) == (False, 0.0)
    assert "does not state" in score.checks[0]["detail"]
    assert env.final_state()["tool_sequence"] == ["run_query", "list_tables"]


def test_every_demo_task_has_a_gold_result(shop: str) -> None:
    env = SqlEnvironment(database=shop)
    for task in demo_tasks():
        env.reset(task)
        assert env.gold is not None and env.gold.rows, task["id"]


def test_tool_schemas_equal_transformers_get_json_schema(shop: str) -> None:
    env = SqlEnvironment(database=shop)
    for name, fn in env.tools().items():
        theirs = get_json_schema(fn)
        theirs["function"].pop("return", None)
        assert tool_schema(fn) == theirs, name


def test_tool_schema_types_and_errors() -> None:
    def book(city: str, nights: int, rooms: list[str], budget: float | None = None) -> str:
        """Book a hotel.

        Args:
            city: Where.
            nights: How many nights,
                at least one.
            rooms: Room kinds.
            budget: At most this much.
        """
        return city

    ours = tool_schema(book)
    theirs = get_json_schema(book)
    theirs["function"].pop("return", None)
    assert ours == theirs
    assert ours["function"]["parameters"]["properties"]["nights"]["description"] == (
        "How many nights, at least one."
    )

    def undocumented(x: int) -> int:
        """Nothing about x."""
        return x

    with pytest.raises(ToolSchemaError, match="'x' is not described"):
        tool_schema(undocumented)


def test_the_trl_adapter_exposes_exactly_the_tools_and_the_reward(shop: str) -> None:
    cls = as_trl_environment(SqlEnvironment, database=shop)
    instance = cls()
    # what GRPOTrainer does: public functions on the class, minus reset / get_reward
    methods = [
        getattr(instance, n)
        for n, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
        if n not in ("reset", "get_reward") and not n.startswith("_")
    ]
    assert sorted(m.__name__ for m in methods) == ["describe_table", "list_tables", "run_query"]
    env_schemas = {s["function"]["name"]: s for s in SqlEnvironment(database=shop).tool_schemas()}
    for method in methods:
        schema = get_json_schema(method)
        schema["function"].pop("return", None)
        assert schema == env_schemas[method.__name__]
    prompt = instance.reset(**TASK)
    assert "How many customers live in Lyon?" in prompt
    instance.list_tables()
    assert instance.run_query(sql=TASK["gold_sql"]).splitlines()[0] == "count_star()"
    assert instance.get_reward() == 1.0  # inspected first, and the last query is the gold one
    instance.reset(**TASK)
    assert instance.run_query("SELECT 0").splitlines()[-1] == "0"
    assert instance.get_reward() == 0.0


def test_the_intern_database_is_a_named_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))  # default_database builds under it
    monkeypatch.setenv("ASSAY_TOOLS_CACHE", str(tmp_path / "tools"))  # the shop's
    tasks = intern_tasks("train", limit=5)
    assert {t["database"] for t in tasks} == {"intern_sql"}
    assert len({t["template"] for t in tasks}) == 5  # interleaved templates
    env = SqlEnvironment(database="intern_sql")
    assert Path(env.database) == tmp_path / "tasks" / "intern_sql-0.duckdb"
    assert run(env, "list_tables").content == "race_results"
    for task in tasks:
        env.reset({k: v for k, v in task.items() if k != "database"})
        (gold,) = env.gold.rows[0]
        run(env, "describe_table", table="race_results")
        run(env, "run_query", sql=task["gold_sql"])
        env.end_turn(f"The answer is {gold}.")
        assert env.score().correct, task["id"]
    # a row naming the database overrides the environment's; the shop stays the default
    shop_env = SqlEnvironment()
    assert Path(shop_env.database).name.startswith("shop")
    shop_env.reset(tasks[0])
    assert shop_env.database == env.database
    assert resolve_database("intern_sql:1").endswith("intern_sql-1.duckdb")
    assert resolve_database("/data/x.duckdb") == "/data/x.duckdb"
