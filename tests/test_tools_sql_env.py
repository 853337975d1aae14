"""SqlEnvironment: refuses writes and file access, scores answer and discipline; the tool API
builds the schemas transformers/TRL build; the TRL adapter exposes exactly the tools."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import duckdb
import pytest
import xgrammar
from local_tiny_model import build_tiny_model, build_tokenizer
from transformers.utils import get_json_schema
from xgrammar.testing import _is_grammar_accept_string

from assay.curate.llm.types import ChatRequest
from assay.models.chat_format import render_prompt
from assay.models.local_backend import LocalBackend
from assay.models.registry import ModelRegistry
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


SINGLE_TABLE_GOLD = [t for t in demo_tasks() if " JOIN " not in t["gold_sql"]]


def test_the_schema_grammar_admits_the_single_table_gold_queries_and_nothing_foreign(
    shop: str,
) -> None:
    env = SqlEnvironment(database=shop, schema_constrained=True)
    schemas = {s["function"]["name"]: s["function"] for s in env.tool_schemas()}
    assert schemas["describe_table"]["parameters"]["properties"]["table"]["enum"] == [
        "customers",
        "orders",
        "products",
    ]
    source = schemas["run_query"]["parameters"]["properties"]["sql"]["pattern"]
    pattern = re.compile(source)
    admitted = [t["id"] for t in SINGLE_TABLE_GOLD if pattern.fullmatch(t["gold_sql"])]
    # every single-table count, filter, top-1 and group-by query of the demo tasks; the
    # date range (DATE literals) and ROUND() are outside the grammar
    rejected = {t["id"] for t in SINGLE_TABLE_GOLD} - set(admitted)
    assert rejected == {"shop-16", "shop-17"}
    foreign = [
        "SELECT COUNT(*) FROM suppliers",  # no such table
        "SELECT COUNT(*) FROM customers WHERE city = 'Lyon'",  # no such column
        "SELECT qty FROM customers",  # a column of another table
        "SELECT SUM(o.qty) FROM orders o JOIN products p ON o.sku = p.sku",
        "SELECT 1; DROP TABLE customers",
        "SELECT full_name FROM customers8",  # past the end of a table's optional tail
        "SELECT COUNT(*) FROM customers LIMIT 10 5",
        "SELECT COUNT(*) FROM customers WHERE signup_year = 2024.",
    ]
    for sql in foreign:
        assert not pattern.fullmatch(sql), sql
    # the decoder's reading of the pattern (xgrammar) agrees with Python's on both sides
    grammar = xgrammar.Grammar.from_json_schema(
        json.dumps({"type": "string", "pattern": source}), any_whitespace=False
    )
    for sql in [t["gold_sql"] for t in SINGLE_TABLE_GOLD if t["id"] in admitted] + foreign:
        accepted = _is_grammar_accept_string(grammar, json.dumps(sql))
        assert accepted == bool(pattern.fullmatch(sql)), sql
    # off by default: the schemas are the plain ones
    plain = {s["function"]["name"]: s["function"] for s in SqlEnvironment(shop).tool_schemas()}
    assert "enum" not in plain["describe_table"]["parameters"]["properties"]["table"]
    assert "pattern" not in plain["run_query"]["parameters"]["properties"]["sql"]


def test_the_prompt_shows_the_enum_but_not_the_grammar(shop: str, tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path)
    env = SqlEnvironment(database=shop, schema_constrained=True)
    grep = {  # a parameter named "pattern" is a schema, not a grammar: it stays
        "type": "function",
        "function": {
            "name": "grep",
            "parameters": {
                "type": "object",
                "properties": {"pattern": {"type": "string", "description": "what to find"}},
            },
        },
    }
    prompt = render_prompt(
        tokenizer, [{"role": "user", "content": "?"}], [*env.tool_schemas(), grep]
    )
    assert '"enum": ["customers", "orders", "products"]' in prompt
    assert "SELECT (COUNT" not in prompt and '"pattern": "^' not in prompt
    assert '"pattern": {"type": "string", "description": "what to find"}' in prompt


def test_a_model_constrained_by_the_grammar_writes_queries_that_parse(
    shop: str, tmp_path: Path
) -> None:
    """A randomly initialised model knows no SQL: whatever it writes under the grammar is a
    single-table SELECT over the shop's own names that DuckDB parses."""
    model_dir = build_tiny_model(tmp_path / "model")
    registry = ModelRegistry(tmp_path / "registry.json")
    registry.register_model("tiny", model_dir)
    backend = LocalBackend("tiny", registry=registry, device="cpu", gather_s=0.0, threads=1)
    env = SqlEnvironment(database=shop, schema_constrained=True)
    env.reset(TASK)
    pattern = re.compile(
        next(s for s in env.tool_schemas() if s["function"]["name"] == "run_query")["function"][
            "parameters"
        ]["properties"]["sql"]["pattern"]
    )
    requests = [
        ChatRequest(
            model="local/tiny",
            messages=({"role": "user", "content": TASK["question"]},),
            params={
                "temperature": 1.0,
                "seed": seed,
                "max_tokens": 400,
                "tool_choice": {"type": "function", "function": {"name": "run_query"}},
                "parallel_tool_calls": False,
            },
            tools=tuple(env.tool_schemas()),
        )
        for seed in range(4)
    ]
    try:
        responses = backend.complete_many(requests)
    finally:
        backend.close()
    queries = [
        json.loads(r.tool_calls[0]["function"]["arguments"])["sql"]
        for r in responses
        if r.finish_reason == "tool_calls"
    ]
    assert len(queries) >= 2, [r.finish_reason for r in responses]
    con = duckdb.connect()
    for sql in queries:
        assert pattern.fullmatch(sql), sql
        assert len(con.extract_statements(sql)) == 1, sql


def test_the_answer_tool_is_offered_only_when_asked_and_ends_the_episode(shop: str) -> None:
    assert "final_answer" not in SqlEnvironment(shop).tools()
    assert "final_answer" not in dir(as_trl_environment(SqlEnvironment, database=shop))
    trl_class = as_trl_environment(SqlEnvironment, database=shop, answer_tool=True)
    assert "final_answer" in dir(trl_class)
    env = SqlEnvironment(shop, answer_tool=True)
    env.reset(TASK)
    run(env, "describe_table", table="customers")
    run(env, "run_query", sql=TASK["gold_sql"])
    gold = env.last_result.rows[0][0]
    assert not env.done
    assert run(env, "final_answer", answer=f"{gold} customers").content == "Answer recorded."
    assert env.done and env.answer == f"{gold} customers"
    score = env.score()
    assert (score.correct, score.reward) == (True, 1.0)
    # the answer tool is not a look at the schema: answering first is undisciplined
    env.reset(TASK)
    run(env, "final_answer", answer=str(gold))
    run(env, "run_query", sql=TASK["gold_sql"])
    assert env.inspected_before_query() is False


def answer_pattern(env: SqlEnvironment) -> str | None:
    schema = next(s for s in env.tool_schemas() if s["function"]["name"] == "final_answer")
    return schema["function"]["parameters"]["properties"]["answer"].get("pattern")


def test_answer_from_result_makes_the_answer_restate_the_last_query(shop: str) -> None:
    with pytest.raises(ValueError, match="answer_tool"):
        SqlEnvironment(shop, answer_from_result=True)
    env = SqlEnvironment(shop, answer_tool=True, answer_from_result=True)
    env.reset(TASK)
    assert answer_pattern(env) is None  # no query yet: the answer is free
    with pytest.raises(ValueError):
        env.run_query("SELECT nope FROM customers")
    assert answer_pattern(env) is None  # a failed query leaves it free
    run(env, "run_query", sql="SELECT COUNT(*) FROM customers WHERE home_city = 'Paris'")
    wrong = str(env.last_result.rows[0][0])
    source = answer_pattern(env)
    assert re.fullmatch(source, wrong) and not re.fullmatch(source, wrong + "0")
    grammar = xgrammar.Grammar.from_json_schema(
        json.dumps({"type": "string", "pattern": source}), any_whitespace=False
    )
    assert _is_grammar_accept_string(grammar, json.dumps(wrong))
    assert not _is_grammar_accept_string(grammar, json.dumps(f"{wrong} customers"))
    # the answer the pattern forces is scored against the gold result: the query was wrong
    run(env, "final_answer", answer=wrong)
    assert env.score().correct is False
    env.reset(TASK)
    run(env, "run_query", sql=TASK["gold_sql"])
    run(env, "final_answer", answer=str(env.last_result.rows[0][0]))
    assert env.score().correct is True
    # several cells are written out in order; characters special in a pattern are escaped
    env.reset(TASK)
    run(env, "run_query", sql="SELECT 'a.b-(c)' AS x, 3.5 AS y")
    source = answer_pattern(env)
    assert re.fullmatch(source, "a.b-(c), 3.5") and not re.fullmatch(source, "aXb-(c), 3.5")
    grammar = xgrammar.Grammar.from_json_schema(
        json.dumps({"type": "string", "pattern": source}), any_whitespace=False
    )
    assert _is_grammar_accept_string(grammar, json.dumps("a.b-(c), 3.5"))
    assert not _is_grammar_accept_string(grammar, json.dumps("aXb-(c), 3.5"))
    # more than 10 cells: too long to restate, the answer stays free
    run(env, "run_query", sql="SELECT cust_ref FROM customers LIMIT 11")
    assert answer_pattern(env) is None


def test_digits_inside_a_word_state_no_number_and_a_lucky_answer_needs_the_right_query(
    shop: str,
) -> None:
    count_all = {"id": "c", "question": "How many customers are there?"}
    count_all["gold_sql"] = "SELECT COUNT(*) FROM customers"
    env = SqlEnvironment(shop, answer_tool=True)
    env.reset(count_all)
    n = env.gold.rows[0][0]
    run(env, "final_answer", answer=f"customer_{n}")
    assert env.score().correct is False  # a name, not the count
    env.reset(count_all)
    run(env, "final_answer", answer=f"There are {n}.")
    assert env.score().correct is True
    # answer_from_result: the right number from the wrong query is not execution accuracy
    env = SqlEnvironment(shop, answer_tool=True, answer_from_result=True)
    env.reset(count_all)
    run(env, "run_query", sql=f"SELECT {n} AS lucky")
    run(env, "final_answer", answer=str(n))
    assert env.score().correct is True  # same result set: execution accuracy counts it
    env.reset(count_all)
    run(env, "run_query", sql="SELECT COUNT(*) FROM orders")
    run(env, "final_answer", answer=str(n))  # an API model may ignore the pattern
    assert env.score().correct is False
