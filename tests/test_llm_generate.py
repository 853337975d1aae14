"""Generate and the parse steps inside real pipeline runs against the fake OpenAI server:
request cache identity, per-row parameters, n samples, failures, secrets, cache clear."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from openai_server import FakeOpenAI
from pydantic import BaseModel

from assay.curate.errors import StageError
from assay.curate.llm.cache import clear_cache
from assay.curate.llm.client import LLMSettings
from assay.curate.pipeline import Pipeline
from assay.curate.store import RunStore
from assay.operators.generate import Generate
from assay.operators.parse import ParseReasoning, ParseRegex, ParseStructured

MODEL = "openai/fake"
SECRET = "sk-test-SECRET-7777"
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05, "retry_jitter_s": 0.01, "max_attempts": 3}


def rows(n: int = 6) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], "q": [f"question {i}" for i in range(n)]})


def gen(server: FakeOpenAI, **kw: object) -> Generate:
    args: dict[str, object] = {
        "model": MODEL,
        "api_base": server.base_url,
        "api_key": SECRET,
        "prompt": "Q: {{ q }}",
        **FAST,
    }
    args.update(kw)
    return Generate(**args)  # type: ignore[arg-type]


def answer_number(body: dict) -> str:
    q = body["messages"][-1]["content"]
    return f"Answer: {q.split()[-1]}"


def test_cache_identity_same_input_param_change_and_parser_change(workspace: Path) -> None:
    with FakeOpenAI(responder=answer_number) as server:
        first = Pipeline([gen(server), ParseRegex(pattern=r"Answer: (?P<n>\d+)")], batch_size=4)
        r1 = first.run(rows(), workspace=workspace, progress="quiet")
        assert server.total_billed == 6
        assert r1.to_arrow()["n"].to_pylist() == [str(i) for i in range(6)]

        # same input again: every response comes from the cache
        first.run(rows(), workspace=workspace, progress="quiet")
        assert server.total_billed == 6

        # a different parse step re-parses stored responses: still no request
        reparse = Pipeline([gen(server), ParseRegex(pattern=r"(?P<word>Answer)")], batch_size=4)
        r3 = reparse.run(rows(), workspace=workspace, progress="quiet")
        assert server.total_billed == 6
        assert r3.to_arrow()["word"].to_pylist() == ["Answer"] * 6

        # a changed generation parameter changes the answer: new requests
        Pipeline([gen(server, temperature=0.3)], batch_size=4).run(
            rows(), workspace=workspace, progress="quiet"
        )
        assert server.total_billed == 12

        # --no-cache sends again even though responses are stored
        first.run(rows(), workspace=workspace, progress="quiet", no_cache=True)
        assert server.total_billed == 18
    assert server.rebilled == 6  # only the --no-cache run paid twice

    with RunStore(workspace) as store:
        funnel = {f["name"]: f for f in store.funnel(r3.run_id)}
    assert funnel["Generate"]["requests"] == 6
    assert funnel["Generate"]["cached"] == 6


def test_tokens_and_cost_are_summed_per_stage_and_run(workspace: Path) -> None:
    prices = {MODEL: {"input": 1_000_000.0, "output": 1_000_000.0}}  # $1 per token
    with FakeOpenAI() as server:
        result = Pipeline([gen(server, prices=prices)], batch_size=3).run(
            rows(), workspace=workspace, progress="quiet"
        )
    table = result.to_arrow()
    tokens = sum(table["generation_input_tokens"].to_pylist()) + sum(
        table["generation_output_tokens"].to_pylist()
    )
    (generate,) = result.funnel()
    assert generate["requests"] == 6 and generate["failed"] == 0
    assert generate["input_tokens"] + generate["output_tokens"] == tokens
    assert generate["cost"] == pytest.approx(tokens)


def test_per_row_generation_parameters_reach_the_server(workspace: Path) -> None:
    table = rows(3).append_column(
        "params",
        pa.array(
            [
                json.dumps({"temperature": 0.1, "max_tokens": 11}),
                json.dumps({"temperature": 0.9, "seed": 7}),
                "",
            ]
        ),
    )
    with FakeOpenAI() as server:
        stage = gen(
            server, temperature=0.5, stop=["END"], params_column="params", system_prompt="Be brief."
        )
        Pipeline([stage]).run(table, workspace=workspace, progress="quiet")
    by_q = {b["messages"][-1]["content"]: b for b in server.bodies}
    assert by_q["Q: question 0"]["temperature"] == 0.1
    assert by_q["Q: question 0"]["max_tokens"] == 11
    assert by_q["Q: question 1"]["temperature"] == 0.9
    assert by_q["Q: question 1"]["seed"] == 7
    assert by_q["Q: question 2"]["temperature"] == 0.5
    assert all(b["stop"] == ["END"] for b in server.bodies)
    assert all(
        b["messages"][0] == {"role": "system", "content": "Be brief."} for b in server.bodies
    )


def test_n_samples_make_one_row_per_sample_in_input_order(workspace: Path) -> None:
    with FakeOpenAI(latency_s=0.02, jitter_s=0.02) as server:
        result = Pipeline([gen(server, n=3, temperature=1.0)], batch_size=4).run(
            rows(5), workspace=workspace, progress="quiet"
        )
        assert server.total_billed == 15  # three distinct requests per prompt
    out = result.to_arrow()
    assert out["id"].to_pylist() == [f"r{i}/s{k}" for i in range(5) for k in range(3)]
    assert out["parent_id"].to_pylist() == [f"r{i}" for i in range(5) for _ in range(3)]
    assert out["sample_index"].to_pylist() == [0, 1, 2] * 5
    assert out["generation"].to_pylist() == [
        f"echo: Q: question {i}" for i in range(5) for _ in range(3)
    ]
    with RunStore(workspace) as store:
        assert store.source_of(result.run_id, "r3/s2") == "r3"


def test_seeded_samples_of_one_prompt_get_distinct_seeds(workspace: Path) -> None:
    with FakeOpenAI() as server:
        Pipeline([gen(server, n=3, temperature=1.0, seed=7)]).run(
            rows(2), workspace=workspace, progress="quiet"
        )
        seeds = sorted(body["seed"] for body in server.bodies)
    assert len(seeds) == 6
    assert seeds.count(7) == 2  # sample 0 keeps the user's seed
    assert len(set(seeds)) == 3  # samples 1 and 2 get their own, the same for both prompts


def test_failed_rows_are_rejected_or_fail_the_run_with_require_all(workspace: Path) -> None:
    def script(key: str, attempt: int) -> str | None:
        return "400" if server.bodies[-1]["messages"][-1]["content"].endswith(("1", "4")) else None

    with FakeOpenAI(script=script) as server:
        result = Pipeline([gen(server)], batch_size=3).run(
            rows(), workspace=workspace, progress="quiet"
        )
        assert result.to_arrow()["id"].to_pylist() == ["r0", "r2", "r3", "r5"]
        rejects = result.rejects()
        assert sorted(rejects["id"].to_pylist()) == ["r1", "r4"]
        assert all("llm request failed" in r and "400" in r for r in rejects["_reason"].to_pylist())
        (generate,) = result.funnel()
        assert generate["failed"] == 2

        with pytest.raises(StageError, match="1 of 3 requests failed"):
            Pipeline([gen(server, require_all=True, seed=1)], batch_size=3).run(
                rows(), workspace=workspace, progress="quiet"
            )


def test_secrets_never_reach_the_store_or_outputs(workspace: Path) -> None:
    with FakeOpenAI() as server:
        result = Pipeline([gen(server)]).run(rows(2), workspace=workspace, progress="quiet")
    assert server.raw_headers[0]["Authorization"] == f"Bearer {SECRET}"
    con = duckdb.connect(str(workspace / "assay.duckdb"), read_only=True)
    dumped = []
    for (table,) in con.execute("select table_name from information_schema.tables").fetchall():
        dumped.append(json.dumps(con.execute(f"select * from {table}").fetchall(), default=str))
    con.close()
    blob = "\n".join(dumped)
    assert "echo: Q: question 0" in blob  # the stored response is there, the key is not
    assert SECRET not in blob
    assert SECRET.encode() not in (workspace / "assay.duckdb").read_bytes()
    for part in result.output_dir.glob("*.parquet"):
        assert SECRET.encode() not in part.read_bytes()


def test_cache_clear_by_model_then_all(workspace: Path) -> None:
    with FakeOpenAI() as server:
        Pipeline([gen(server)]).run(rows(3), workspace=workspace, progress="quiet")
        Pipeline([gen(server, model="openai/other")]).run(
            rows(2), workspace=workspace, progress="quiet"
        )
        assert clear_cache(workspace, model="openai/other") == 2
        assert clear_cache(workspace, model="openai/other") == 0
        Pipeline([gen(server)]).run(rows(3), workspace=workspace, progress="quiet")
        assert server.total_billed == 5  # the first model's answers were kept
        assert clear_cache(workspace) == 3
        Pipeline([gen(server)]).run(rows(3), workspace=workspace, progress="quiet")
        assert server.total_billed == 8


class City(BaseModel):
    city: str
    population: int


def structured(body: dict) -> str:
    last = body["messages"][-1]["content"]
    if "could not be used" in last:
        return '{"city": "Oslo", "population": 700000}'  # the re-ask fixes it
    q = last.split()[-1]
    if q == "0":
        return 'Sure!\n```json\n{"city": "Oslo", "population": 700000,}\n```\nAnything else?'
    if q == "1":
        return '{"city": "Oslo", "population": "many"}'  # violates the schema
    return "I cannot answer that."


def test_structured_output_is_repaired_reasked_or_rejected(workspace: Path) -> None:
    with FakeOpenAI(responder=structured) as server:
        llm = LLMSettings(model=MODEL, api_base=server.base_url, **FAST)  # type: ignore[arg-type]
        pipeline = Pipeline(
            [gen(server), ParseStructured(output_schema=City, max_reasks=1, llm=llm)]
        )
        result = pipeline.run(rows(3), workspace=workspace, progress="quiet")
        reasks = [b for b in server.bodies if "could not be used" in b["messages"][-1]["content"]]
    out = result.to_arrow()
    assert out["id"].to_pylist() == ["r0", "r1", "r2"]
    assert out["city"].to_pylist() == ["Oslo"] * 3
    assert out["population"].to_pylist() == [700000] * 3
    assert len(reasks) == 2  # rows 1 and 2; row 0 was repaired without asking
    assert any("population" in b["messages"][-1]["content"] for b in reasks)
    # the re-ask carries the original prompt and the bad answer
    assert reasks[0]["messages"][0]["content"].startswith("Q: question")
    assert reasks[0]["messages"][1]["role"] == "assistant"


def test_structured_rows_that_stay_invalid_are_rejected_with_the_error(workspace: Path) -> None:
    with FakeOpenAI(responder=structured) as server:
        stages = [
            gen(server),
            ParseStructured(output_schema=City.model_json_schema(), max_reasks=0),
        ]
        result = Pipeline(stages).run(rows(3), workspace=workspace, progress="quiet")
        assert server.total_billed == 3
    assert result.to_arrow()["id"].to_pylist() == ["r0"]
    reasons = dict(
        zip(
            result.rejects()["id"].to_pylist(), result.rejects()["_reason"].to_pylist(), strict=True
        )
    )
    assert "population" in reasons["r1"] and "invalid structured output" in reasons["r1"]
    assert "no JSON" in reasons["r2"]


def test_response_format_is_sent_as_json_schema(workspace: Path) -> None:
    with FakeOpenAI(responder=lambda b: '{"city": "Oslo", "population": 1}') as server:
        stages = [gen(server, response_format=City), ParseStructured(output_schema=City)]
        result = Pipeline(stages).run(rows(1), workspace=workspace, progress="quiet")
    sent = server.bodies[0]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"]["required"] == ["city", "population"]
    assert result.to_arrow()["city"].to_pylist() == ["Oslo"]


def test_parse_reasoning_splits_think_blocks(workspace: Path) -> None:
    with FakeOpenAI(responder=lambda b: "<think>add them</think> 4") as server:
        result = Pipeline([gen(server), ParseReasoning()]).run(
            rows(2), workspace=workspace, progress="quiet"
        )
    out = result.to_arrow()
    assert out["answer"].to_pylist() == ["4", "4"]
    assert out["reasoning"].to_pylist() == ["add them", "add them"]
    assert out["generation_reasoning"].to_pylist() == ["add them", "add them"]


def shout(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["q"].upper()}]


def test_prompt_from_a_function_or_a_messages_column(workspace: Path) -> None:
    table = rows(2).append_column(
        "chat",
        pa.array([json.dumps([{"role": "user", "content": f"hello {i}"}]) for i in range(2)]),
    )
    with FakeOpenAI() as server:
        by_fn = Pipeline([gen(server, prompt=None, prompt_fn=shout)]).run(
            table, workspace=workspace, progress="quiet"
        )
        by_col = Pipeline([gen(server, prompt=None, messages_column="chat")]).run(
            table, workspace=workspace, progress="quiet"
        )
    assert by_fn.to_arrow()["generation"].to_pylist() == ["echo: QUESTION 0", "echo: QUESTION 1"]
    assert by_col.to_arrow()["generation"].to_pylist() == ["echo: hello 0", "echo: hello 1"]
    with RunStore(workspace) as store:
        params = store.run(by_fn.run_id)["config"]["stages"][0]["params"]
    assert params["prompt_fn"].endswith("shout")  # recorded by name
    assert "api_key" not in params


def test_tokens_per_minute_limit_spaces_requests(workspace: Path) -> None:
    # 1,200 TPM = 20 tokens/s with a 20-token burst. Each request reserves at least
    # ~7 input tokens (13 prompt chars / 4 + 4 per message) + 2.5 output (max_tokens / 4
    # before any usage is seen), so 6 requests need >= (6 x 9.75 - 20) / 20 = 1.9 s
    with FakeOpenAI(responder=lambda b: "x" * 36) as server:
        Pipeline([gen(server, tpm=1200, max_tokens=10)]).run(
            rows(6), workspace=workspace, progress="quiet"
        )
    arrivals = sorted(server.arrivals)
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 1.5


def test_tool_calls_flow_from_generate_to_parse_tool_calls(workspace: Path) -> None:
    from assay.operators.parse import ParseToolCalls

    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    with FakeOpenAI(responder=lambda b: {"content": None, "tool_calls": [call]}) as server:
        result = Pipeline([gen(server, tools=tools), ParseToolCalls()]).run(
            rows(1), workspace=workspace, progress="quiet"
        )
        assert server.bodies[0]["tools"] == tools
    out = result.to_arrow()
    assert out["generation_finish_reason"].to_pylist() == ["tool_calls"]
    assert out["tool_calls"].to_pylist() == [[{"name": "add", "arguments": '{"a": 1}'}]]


def test_a_provider_error_quoting_the_key_is_scrubbed(workspace: Path) -> None:
    with FakeOpenAI(script=lambda key, attempt: "401", quote_key_in_errors=True) as server:
        result = Pipeline([gen(server)]).run(rows(1), workspace=workspace, progress="quiet")
    (reason,) = result.rejects()["_reason"].to_pylist()
    assert "injected 401" in reason and "***" in reason
    assert SECRET not in reason
    assert SECRET.encode() not in (workspace / "assay.duckdb").read_bytes()
