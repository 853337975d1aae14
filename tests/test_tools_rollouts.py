"""ToolRollouts through the fake OpenAI server: a scripted multi-turn episode produces the
expected messages, the turn limit and errors end episodes, trajectories export to TRL's
conversational format and load with `datasets.load_dataset("parquet", ...)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai_server import FakeOpenAI

from assay.curate.pipeline import Pipeline
from assay.datasets.export import to_trl, write_export
from assay.operators.tools.rollouts import ToolRollouts
from assay.operators.tools.sql_demo import build_shop
from assay.operators.tools.sql_env import SqlEnvironment

FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05, "retry_jitter_s": 0.01, "max_attempts": 2}
TASK = {
    "id": "lyon",
    "question": "How many customers live in Lyon?",
    "gold_sql": "SELECT COUNT(*) FROM customers WHERE home_city = 'Lyon'",
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_shop(tmp_path_factory.mktemp("db") / "shop.duckdb"))


def tool_call(name: str, k: int, **arguments: Any) -> dict[str, Any]:
    return {
        "id": f"call_{k}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def disciplined(body: dict[str, Any]) -> dict[str, Any]:
    """Look at the tables, then the schema, then query, then answer with the queried count."""
    results = [m for m in body["messages"] if m["role"] == "tool"]
    if len(results) == 0:
        return {"content": None, "tool_calls": [tool_call("list_tables", 0)]}
    if len(results) == 1:
        return {"content": "", "tool_calls": [tool_call("describe_table", 1, table="customers")]}
    if len(results) == 2:
        sql = "SELECT COUNT(*) AS n FROM customers WHERE home_city = 'Lyon'"
        return {"content": None, "tool_calls": [tool_call("run_query", 2, sql=sql)]}
    count = results[-1]["content"].splitlines()[-1]
    return f"There are {count} customers in Lyon."


def rollouts(server: FakeOpenAI, shop: str, **kw: Any) -> ToolRollouts:
    args: dict[str, Any] = {
        "model": "openai/fake",
        "api_base": server.base_url,
        "api_key": "sk-fake",
        "environment": "sql",
        "environment_kwargs": {"database": shop},
        **FAST,
    }
    args.update(kw)
    return ToolRollouts(**args)


def test_a_scripted_episode_produces_the_expected_messages(workspace: Path, shop: str) -> None:
    with FakeOpenAI(responder=disciplined) as server:
        result = Pipeline([rollouts(server, shop, n=2)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
        bodies = list(server.bodies)
    rows = result.to_arrow().to_pylist()
    assert [r["id"] for r in rows] == ["lyon/r0", "lyon/r1"]
    assert {r["parent_id"] for r in rows} == {"lyon"}
    row = rows[0]
    messages = row["messages"]
    assert [m["role"] for m in messages] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert messages[1]["tool_calls"][0]["function"]["name"] == "list_tables"
    assert messages[2]["tool_call_id"] == "call_0" and messages[2]["name"] == "list_tables"
    assert messages[2]["content"].split() == ["customers", "orders", "products"]
    assert "home_city VARCHAR" in messages[4]["content"]
    assert json.loads(messages[5]["tool_calls"][0]["function"]["arguments"])["sql"].startswith(
        "SELECT COUNT(*)"
    )
    assert messages[-1]["content"].startswith("There are ")
    assert (row["correct"], row["reward"], row["turns"], row["finish"]) == (True, 1.0, 4, "answer")
    episode = json.loads(row["episode"])
    assert [c["passed"] for c in episode["checks"]] == [True, True]
    assert episode["final_state"]["tool_sequence"] == ["list_tables", "describe_table", "run_query"]
    assert [t["name"] for t in episode["calls"][2]["tools"]] == ["run_query"]
    assert {t["function"]["name"] for t in json.loads(row["tools"])} == {
        "list_tables",
        "describe_table",
        "run_query",
    }
    # what the server saw: the tools on every request, the tool results sent back as `tool`
    # messages answering the assistant's calls
    last = bodies[-1]
    assert {t["function"]["name"] for t in last["tools"]} == {
        "list_tables",
        "describe_table",
        "run_query",
    }
    roles = [m["role"] for m in last["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]
    assert last["messages"][1]["tool_calls"][0]["id"] == last["messages"][2]["tool_call_id"]


def answers_with_the_tool(body: dict[str, Any]) -> dict[str, Any] | str:
    """The disciplined episode, answering through `final_answer` instead of prose; a model
    that kept going after it would call run_query again."""
    results = [m for m in body["messages"] if m["role"] == "tool"]
    if len(results) == 3:
        count = results[-1]["content"].splitlines()[-1]
        return {"content": None, "tool_calls": [tool_call("final_answer", 3, answer=count)]}
    if len(results) > 3:
        return {"content": None, "tool_calls": [tool_call("run_query", 4, sql="SELECT 1")]}
    return disciplined(body)


def test_the_answer_tool_ends_the_episode_with_its_argument_as_the_answer(
    workspace: Path, shop: str
) -> None:
    with FakeOpenAI(responder=answers_with_the_tool) as server:
        stage = rollouts(server, shop, environment_kwargs={"database": shop, "answer_tool": True})
        rows = Pipeline([stage]).run([TASK], workspace=workspace, progress="quiet")
        rows = rows.to_arrow().to_pylist()
        offered = {t["function"]["name"] for t in server.bodies[0]["tools"]}
    assert offered == {"list_tables", "describe_table", "run_query", "final_answer"}
    row = rows[0]
    assert [m["role"] for m in row["messages"]][-2:] == ["assistant", "tool"]
    assert row["messages"][-1]["content"] == "Answer recorded."
    assert (row["correct"], row["reward"], row["turns"], row["finish"]) == (True, 1.0, 4, "answer")
    state = json.loads(row["episode"])["final_state"]
    assert state["tool_sequence"] == ["list_tables", "describe_table", "run_query", "final_answer"]
    gold = SqlEnvironment(shop)
    gold.reset(TASK)
    assert state["answer"] == str(gold.gold.rows[0][0])


def undisciplined(body: dict[str, Any]) -> dict[str, Any] | str:
    results = [m for m in body["messages"] if m["role"] == "tool"]
    if not results:
        sql = "SELECT COUNT(*) FROM customers WHERE city = 'Lyon'"  # guessed column name
        return {"content": None, "tool_calls": [tool_call("run_query", 0, sql=sql)]}
    return "There are 3 customers."


def test_guessing_the_schema_scores_low_and_the_error_reaches_the_model(
    workspace: Path, shop: str
) -> None:
    with FakeOpenAI(responder=undisciplined) as server:
        result = Pipeline([rollouts(server, shop)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
    row = result.to_arrow().to_pylist()[0]
    assert (
        row["messages"][2]["content"].startswith("Error:")
        and "city" in row["messages"][2]["content"]
    )
    assert (row["correct"], row["reward"]) == (False, 0.0)


def test_the_turn_limit_and_request_errors_end_episodes(workspace: Path, shop: str) -> None:
    looping = lambda body: {"content": None, "tool_calls": [tool_call("list_tables", 0)]}  # noqa: E731
    with FakeOpenAI(responder=looping) as server:
        result = Pipeline([rollouts(server, shop, max_turns=3)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
    row = result.to_arrow().to_pylist()[0]
    assert (row["finish"], row["turns"], row["correct"]) == ("turn_limit", 3, False)
    with FakeOpenAI(script=lambda key, attempt: "400") as server:
        result = Pipeline([rollouts(server, shop)]).run(
            [TASK], workspace=workspace / "b", progress="quiet"
        )
    row = result.to_arrow().to_pylist()[0]
    assert (row["finish"], row["correct"]) == ("error", False)
    assert "400" in json.loads(row["episode"])["error"]


def test_trajectories_export_to_trl_messages_and_load_with_datasets(
    workspace: Path, shop: str, tmp_path: Path
) -> None:
    import datasets

    with FakeOpenAI(responder=disciplined) as server:
        result = Pipeline([rollouts(server, shop)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
    paths = write_export(to_trl(result.to_arrow(), "messages"), tmp_path / "sft", save_hf=False)
    loaded = datasets.load_dataset("parquet", data_files=str(paths.parquet))["train"]
    assert loaded.column_names == ["id", "messages", "tools"]
    messages = loaded[0]["messages"]
    assert [m["role"] for m in messages][:3] == ["user", "assistant", "tool"]
    arguments = messages[5]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str) and "Lyon" in json.loads(arguments)["sql"]
    assert json.loads(loaded[0]["tools"])[0]["type"] == "function"


@pytest.mark.integration
def test_the_embedded_model_plays_a_scored_sql_episode(workspace: Path, shop: str) -> None:
    stage = ToolRollouts(
        model="local/smollm2-135m",
        environment="sql",
        environment_kwargs={"database": shop},
        max_turns=2,
        max_tokens=48,
        temperature=0.0,
    )
    result = Pipeline([stage]).run([TASK], workspace=workspace, progress="quiet")
    (row,) = result.to_arrow().to_pylist()
    messages = row["messages"]
    assert messages[0]["role"] == "user" and messages[1]["role"] == "assistant"
    assert row["finish"] in ("answer", "turn_limit") and 1 <= row["turns"] <= 2
    # every tool call the model made was executed and answered by a tool message
    calls = [c["id"] for m in messages if m["tool_calls"] for c in m["tool_calls"]]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert calls == answered
    episode = json.loads(row["episode"])
    assert [c["check"] for c in episode["checks"]] == ["answer", "discipline"]
    assert (
        row["reward"] == 0.7 * episode["checks"][0]["passed"] + 0.3 * episode["checks"][1]["passed"]
    )


# a ChatML template that renders tools, tool calls and tool turns, so the test sees whether
# the trajectory structure reaches the tokens
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{{ tools | tojson }}</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
    "{%- for c in m['tool_calls'] or [] %}<tool_call>{\"name\": \"{{ c['function']['name'] }}\", "
    "\"arguments\": {{ c['function']['arguments'] }}}</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_rollout_trajectories_pass_trl_sft_data_preparation(
    workspace: Path, shop: str, tmp_path: Path
) -> None:
    import datasets
    from local_tiny_model import build_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    with FakeOpenAI(responder=disciplined) as server:
        result = Pipeline([rollouts(server, shop)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
    paths = write_export(to_trl(result.to_arrow(), "messages"), tmp_path / "sft", save_hf=False)
    loaded = datasets.load_dataset("parquet", data_files=str(paths.parquet), split="train")
    tiny = build_tiny_model(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = TOOL_TEMPLATE
    config = SFTConfig(
        output_dir=str(tmp_path / "trainer"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        gradient_checkpointing=False,
        max_length=2048,
        dataset_num_proc=None,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny),
        args=config,
        train_dataset=loaded,
        processing_class=tokenizer,
    )
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert '<tool_call>{"name": "describe_table", "arguments": {"table": "customers"}}' in text
    assert "<|im_start|>tool\ncustomers\norders\nproducts" in text  # a tool result turn
    assert '"name": "run_query"' in text.split("</tools>")[0]  # the tools column


def test_force_tools_requires_a_tool_call_for_the_first_calls_of_each_turn(
    workspace: Path, shop: str
) -> None:
    with FakeOpenAI(responder=disciplined) as server:
        result = Pipeline([rollouts(server, shop, force_tools=2)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
        bodies = list(server.bodies)
    assert [b.get("tool_choice") for b in bodies] == ["required", "required", None, None]
    (row,) = result.to_arrow().to_pylist()
    assert (row["correct"], row["finish"]) == (True, "answer")
    with pytest.raises(ValueError, match="force_tools"):
        ToolRollouts(model="openai/fake", environment="sql", force_tools=-1)


def test_force_tools_as_a_list_names_the_tool_of_each_call(workspace: Path, shop: str) -> None:
    plan = ["list_tables", "describe_table", "run_query", "none"]
    with FakeOpenAI(responder=disciplined) as server:
        result = Pipeline([rollouts(server, shop, force_tools=plan)]).run(
            [TASK], workspace=workspace, progress="quiet"
        )
        bodies = list(server.bodies)
    choices = [b.get("tool_choice") for b in bodies]
    assert choices[:3] == [{"type": "function", "function": {"name": n}} for n in plan[:3]]
    assert choices[3] is None and not bodies[3].get("tools")  # "none": asked without tools
    assert all(b.get("tools") for b in bodies[:3])
    (row,) = result.to_arrow().to_pylist()
    assert (row["correct"], row["finish"]) == (True, "answer")
    # the tools column still lists what the episode offered
    assert {t["function"]["name"] for t in json.loads(row["tools"])} == {
        "list_tables",
        "describe_table",
        "run_query",
    }


class RecordingClient:
    """A client that answers with the `disciplined` script and records each batch of
    requests the stage sends together (`complete_many`)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    async def complete_many(self, requests: list[Any]) -> list[Any]:
        import asyncio

        from assay.curate.llm.types import ChatResponse

        self.batches.append(list(requests))
        await asyncio.sleep(0.01)  # the answer takes a while: other tasks may go meanwhile
        out = []
        for request in requests:
            answer = disciplined({"messages": list(request.messages)})
            if isinstance(answer, str):
                out.append(ChatResponse(text=answer, finish_reason="stop"))
            else:
                calls = answer["tool_calls"]
                out.append(ChatResponse(text=None, tool_calls=calls, finish_reason="tool_calls"))
        return out


@pytest.mark.parametrize("concurrent_tasks", [1, 0])
def test_episodes_of_a_task_go_out_together_one_task_at_a_time(
    shop: str, concurrent_tasks: int
) -> None:
    import asyncio

    import pyarrow as pa

    tasks = [
        {**TASK, "id": f"lyon-{i}", "question": f"How many customers live in Lyon? ({i})"}
        for i in range(3)
    ]
    client = RecordingClient()
    stage = ToolRollouts(
        model="openai/fake",
        environment="sql",
        environment_kwargs={"database": shop},
        n=4,
        concurrent_tasks=concurrent_tasks,
    ).use_client(client)
    out = asyncio.run(stage.aprocess(pa.Table.from_pylist(tasks))).to_pylist()
    assert [r["id"] for r in out] == [f"lyon-{i}/r{k}" for i in range(3) for k in range(4)]
    assert all(r["correct"] and r["turns"] == 4 for r in out)
    # every round sends the live episodes' calls in one batch: 4 calls per episode
    tasks_per_batch = [
        {next(m["content"] for m in r.messages if m["role"] == "user") for r in batch}
        for batch in client.batches
    ]
    assert [len(b) for b in client.batches] == [4] * 12
    assert all(len(t) == 1 for t in tasks_per_batch)
    assert all(sorted(r.sample_index for r in b) == [0, 1, 2, 3] for b in client.batches)
    first_rounds = [t.pop() for t in tasks_per_batch[:3]]
    if concurrent_tasks == 1:  # one task after the other: its 4 rounds, then the next task
        assert len(set(first_rounds)) == 1
    else:  # no limit: the tasks play at the same time (their first rounds come first)
        assert len(set(first_rounds)) == 3


def test_default_task_concurrency_fills_a_local_batch_and_is_one_gate_per_loop() -> None:
    import asyncio

    async def gate(stage: ToolRollouts) -> tuple[int | None, bool]:
        first, again = stage._task_gate(), stage._task_gate()
        return (None if first is None else first._value), first is again

    def stage(model: str, n: int, **options: Any) -> ToolRollouts:
        return ToolRollouts(model=model, environment="sql", n=n, **options)

    assert asyncio.run(gate(stage("local/smollm2-135m", 2))) == (4, True)
    assert asyncio.run(gate(stage("local/smollm2-135m", 8))) == (1, True)
    assert asyncio.run(gate(stage("local/smollm2-135m", 8, concurrent_tasks=3))) == (3, True)
    assert asyncio.run(gate(stage("openai/gpt-4.1-mini", 2))) == (None, True)
    one = stage("local/smollm2-135m", 2)
    loops = []

    async def grab() -> None:
        loops.append(one._task_gate())

    asyncio.run(grab())
    asyncio.run(grab())
    assert loops[0] is not loops[1]  # a semaphore belongs to one event loop
    assert len(one._gates) == 1  # the first (closed) loop's went when the second came


def test_an_exported_run_card_counts_episodes_and_names_the_source(
    workspace: Path, shop: str, tmp_path: Path
) -> None:
    """Two tasks x 3 episodes; the fake model answers Lyon right in its first 2 episodes
    only and never Porto: the card says 6 samples, 2 verified, 1 of 2 problems solved."""
    from assay.datasets.export_run import export_run

    seen: dict[str, int] = {}

    def some_right(body: dict[str, Any]) -> dict[str, Any] | str:
        reply = disciplined(body)
        if isinstance(reply, str):
            question = body["messages"][0]["content"]
            seen[question] = seen.get(question, 0) + 1
            if "Porto" in question or seen[question] > 2:
                return "There are 999 customers."
        return reply

    porto = {**TASK, "id": "porto", "question": "How many customers live in Porto?"}
    porto["gold_sql"] = TASK["gold_sql"].replace("Lyon", "Porto")
    with FakeOpenAI(responder=some_right) as server:
        stage = rollouts(server, shop, n=3, concurrent_tasks=1)
        result = Pipeline([stage]).run([TASK, porto], workspace=workspace, progress="quiet")
    assert sum(r["correct"] for r in result.to_arrow().to_pylist()) == 2
    paths = export_run(result.run_id, tmp_path / "sft", "messages", workspace=workspace)
    assert paths.rows == 2
    card = paths.card.read_text()
    assert "samples drawn: 6, verified correct: 2 (33.3%)" in card
    assert "problems: 2, with at least one correct sample: 1" in card
    # a database of the user's own: its source is not assay's to name
    assert "Licence of the source data: not recorded" in card
    from assay.datasets.cards import BFCL, SHOP, infer_source

    def stage(**params: Any) -> list[dict[str, Any]]:
        return [{"stage": "ToolRollouts", "params": params}]

    assert infer_source(stage(environment="sql", environment_kwargs={}), {}) is SHOP
    assert infer_source(stage(environment="sql", environment_kwargs={"database": shop}), {}) is None
    assert infer_source(stage(environment="bfcl"), {}) is BFCL and BFCL.evaluation_only
