"""Structured output end to end: re-asks carry the row's parameters and response_format,
the row keeps the answer that parsed, rows are rejected only after the configured re-asks;
JSON extraction picks the right value and repairs without touching strings; schemas are
checked once; a parameter litellm drops is warned about once."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pyarrow as pa
import pytest
from openai_server import FakeOpenAI
from pydantic import BaseModel

from assay.curate.pipeline import Pipeline
from assay.operators.generate import Generate
from assay.operators.jsontext import extract_json
from assay.operators.parse import ParseStructured

FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.02, "retry_jitter_s": 0.0, "max_attempts": 2}
REASK_MARK = "could not be used"


class City(BaseModel):
    city: str
    population: int


def rows(n: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], "q": [f"q {i}" for i in range(n)]})


def reasks_of(body: dict) -> int:
    return sum(REASK_MARK in str(m.get("content")) for m in body["messages"])


def scripted(bad_until: dict[str, int]):
    """Row `q k` answers invalid JSON for its first bad_until[k] answers (the first one and
    then re-asks), then a valid one whose population is k."""

    def respond(body: dict) -> str:
        k = body["messages"][0]["content"].split()[-1]
        if reasks_of(body) < bad_until.get(k, 0):
            return json.dumps({"city": f"bad {k}", "population": "many"})
        return json.dumps({"city": f"city {k}", "population": int(k)})

    return respond


@pytest.mark.parametrize("transport", ["litellm", "http"])
def test_reasks_carry_the_rows_parameters_and_response_format(
    workspace: Path, transport: str
) -> None:
    with FakeOpenAI(responder=scripted({"1": 1})) as server:
        stages = [
            Generate(
                model="openai/fake",
                api_base=server.base_url,
                prompt="{{ q }}",
                temperature=0.3,
                max_tokens=64,
                seed=5,
                response_format=City,
                transport=transport,
                **FAST,
            ),
            ParseStructured(output_schema=City),  # re-asks through the row's own settings
        ]
        result = Pipeline(stages).run(rows(3), workspace=workspace, progress="quiet")
        (reask,) = [b for b in server.bodies if reasks_of(b)]
    assert reask["temperature"] == 0.3 and reask["max_tokens"] == 64 and reask["seed"] == 5
    assert reask["response_format"]["type"] == "json_schema"
    assert reask["response_format"]["json_schema"]["schema"]["required"] == ["city", "population"]
    out = result.to_arrow()
    assert out["id"].to_pylist() == ["r0", "r1", "r2"]
    assert out["population"].to_pylist() == [0, 1, 2]
    # the row's text is the answer that parsed, not the invalid first one
    generation = out["generation"].to_pylist()
    assert json.loads(generation[1]) == {"city": "city 1", "population": 1}
    assert [json.loads(g)["city"] for g in generation] == out["city"].to_pylist()
    assert out["parsed_reasks"].to_pylist() == [0, 1, 0]


def test_rows_are_rejected_only_after_the_default_two_reasks(workspace: Path) -> None:
    with FakeOpenAI(responder=scripted({"1": 99, "2": 2})) as server:
        stages = [
            Generate(model="openai/fake", api_base=server.base_url, prompt="{{ q }}", **FAST),
            ParseStructured(output_schema=City),
        ]
        result = Pipeline(stages).run(rows(3), workspace=workspace, progress="quiet")
        asked = [reasks_of(b) for b in server.bodies if b["messages"][0]["content"] == "q 1"]
    assert sorted(asked) == [0, 1, 2]  # the first answer and two re-asks, then rejected
    out = result.to_arrow()
    assert out["id"].to_pylist() == ["r0", "r2"]
    assert out["population"].to_pylist() == [0, 2]
    (reason,) = result.rejects()["_reason"].to_pylist()
    assert "invalid structured output" in reason and "population" in reason


def test_extraction_prefers_the_real_value_and_repairs_outside_strings() -> None:
    assert extract_json('See [1]. {"a": 1}') == {"a": 1}
    assert extract_json('See [1] and [2]: {"a": [1, 2],}') == {"a": [1, 2]}
    # the trailing comma is repaired, the ", }" inside the string is left alone
    assert extract_json('{"a": "x, }", "b": 1,}') == {"a": "x, }", "b": 1}
    assert extract_json("Top 3: [1, 2, 3] (see {note})") == [1, 2, 3]
    assert extract_json('[1] then {"a": 1}', prefer="array") == [1]


def test_a_schema_value_is_chosen_among_several_candidates() -> None:
    stage = ParseStructured(output_schema=City)
    value, error = stage.validate_text('Cf. {"note": 1} -> {"city": "Oslo", "population": 7}')
    assert error is None and value == {"city": "Oslo", "population": 7}


def test_an_invalid_schema_is_refused_when_the_stage_is_built() -> None:
    bad = {"type": "object", "properties": {"a": {"type": "bogus"}}}
    with pytest.raises(ValueError, match="output_schema is not a valid JSON schema"):
        ParseStructured(output_schema=bad)


def test_a_parameter_the_provider_lacks_is_warned_about_once(workspace: Path) -> None:
    with FakeOpenAI() as server:
        stage = Generate(
            model="deepinfra/fake-model",
            api_base=server.base_url,
            api_key="k-test-123456",
            prompt="{{ q }}",
            seed=3,
            temperature=0.5,
            **FAST,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            Pipeline([stage]).run(rows(3), workspace=workspace, progress="quiet")
        assert len(server.bodies) == 3 and "seed" not in server.bodies[0]
    messages = [str(w.message) for w in caught if "not supported" in str(w.message)]
    assert len(messages) == 1, messages
    assert "seed" in messages[0] and "deepinfra/fake-model" in messages[0]
    assert "temperature" not in messages[0]
