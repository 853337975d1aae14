"""LLM judges against the fake OpenAI server: scripted verdicts, malformed and off-schema
verdicts, refusals; each as a stage (columns, rejects) and as a TRL reward function."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
import pytest
from openai_server import FakeOpenAI

from assay.curate.stage import Outcome
from assay.judges.grounding import GroundingJudge
from assay.judges.llm_judge import run_sync
from assay.judges.pairwise import PairwiseJudge
from assay.judges.rubric import Rubric, RubricJudge
from assay.judges.step import StepJudge, split_steps

FAST = {"max_attempts": 1, "api_key": "sk-test-judge", "model": "openai/fake"}


def user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def section(text: str, name: str) -> str:
    return text.split(f"[{name}]\n", 1)[1].split("\n\n", 1)[0]


def run(stage: Any, table: pa.Table) -> pa.Table | Outcome:
    return run_sync(stage.aprocess(table))


def kw(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {**FAST, "api_base": server.base_url, **extra}


# --- RubricJudge -----------------------------------------------------------------------


def rubric_responder(body: dict[str, Any]) -> str:
    """Scores by the response's length: a long answer gets 5s, a short one 1s."""
    good = len(section(user_text(body), "Response")) > 10
    s = 5 if good else 1
    return json.dumps(
        {
            "rationale": "long" if good else "too short",
            "relevance": s,
            "completeness": s,
            "clarity": 3,
        }
    )


def test_rubric_judge_scores_criteria_and_rejects_below_threshold() -> None:
    table = pa.table(
        {
            "id": ["a", "b"],
            "prompt": ["explain tides"] * 2,
            "generation": ["the moon's gravity pulls the oceans", "moon"],
        }
    )
    with FakeOpenAI(responder=rubric_responder) as server:
        out = run(RubricJudge(**kw(server), threshold=0.6), table)
        bodies = list(server.bodies)
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["a"]
    assert out.kept["judge_score"].to_pylist() == pytest.approx([(1 + 1 + 0.5) / 3])
    assert json.loads(out.kept["judge_criteria"][0].as_py()) == {
        "relevance": 5,
        "completeness": 5,
        "clarity": 3,
    }
    assert out.reason_array().to_pylist() == ["fail (score 0.17 < 0.6): too short"]
    # structured output: the schema bounds every criterion to the scale
    schema = bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["clarity"]["maximum"] == 5
    assert sorted(section(user_text(b), "Response") for b in bodies) == [
        "moon",
        "the moon's gravity pulls the oceans",
    ]


def test_rubric_custom_scale_and_reference_rubric_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="reference_column"):
        RubricJudge(model="openai/fake", rubric="correctness")
    custom = Rubric(criteria=[{"name": "Tone OK", "description": "polite"}], scale=(0, 10))

    def responder(body: dict[str, Any]) -> str:
        assert "from 0 (worst) to 10 (best)" in user_text(body)
        return json.dumps({"rationale": "ok", "tone_ok": 7})

    with FakeOpenAI(responder=responder) as server:
        out = run(
            RubricJudge(**kw(server), rubric=custom),
            pa.table({"id": ["x"], "prompt": ["p"], "generation": ["g"]}),
        )
    assert out["judge_score"].to_pylist() == [pytest.approx(0.7)]
    assert out["judge_verdict"].to_pylist() == ["pass"]


def test_malformed_off_schema_and_refused_verdicts_are_unscored_not_passed() -> None:
    answers = {
        "a": "Sure! The response is great.",  # no JSON
        "b": json.dumps({"rationale": "x", "relevance": 9, "completeness": 1, "clarity": 1}),
        "c": "",  # a refusal with no content
        "d": json.dumps({"rationale": "ok", "relevance": 5, "completeness": 5, "clarity": 5}),
    }

    def responder(body: dict[str, Any]) -> str:
        return answers[section(user_text(body), "Request")]

    table = pa.table({"id": list("abcd"), "prompt": list("abcd"), "generation": ["r"] * 4})
    with FakeOpenAI(responder=responder) as server:
        out = run(RubricJudge(**kw(server), threshold=0.5), table)
        kept_unscored = run(RubricJudge(**kw(server), threshold=0.5, keep_unscored=True), table)
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["d"]
    reasons = dict(zip(out.rejected["id"].to_pylist(), out.reason_array().to_pylist(), strict=True))
    assert "no usable JSON" in reasons["a"]
    assert "off schema at relevance" in reasons["b"]
    assert "empty answer" in reasons["c"]
    assert out.rejected["judge_score"].to_pylist() == [None, None, None]
    assert out.rejected["judge_verdict"].to_pylist() == ["error"] * 3
    assert isinstance(kept_unscored, pa.Table) and kept_unscored.num_rows == 4


def test_failed_requests_are_unscored_with_the_error() -> None:
    with FakeOpenAI(script=lambda h, attempt: "500") as server:
        out = run(
            RubricJudge(**kw(server)), pa.table({"id": ["x"], "prompt": ["p"], "generation": ["g"]})
        )
    assert out["judge_score"].to_pylist() == [None]
    assert "request failed" in out["judge_error"][0].as_py()


# --- PairwiseJudge ---------------------------------------------------------------------


def pairwise_responder(body: dict[str, Any]) -> str:
    """Prefers the response containing 'good'; for 'biased' pairs always says A (position
    bias), which the swap must turn into a tie."""
    text = user_text(body)
    a, b = section(text, "Response A"), section(text, "Response B")
    winner = "A" if "good" in a else "B" if "good" in b else "tie"
    if "biased" in text:
        winner = "A"
    return json.dumps({"rationale": f"{winner} is better", "winner": winner})


def test_pairwise_swaps_positions_and_writes_dpo_columns() -> None:
    table = pa.table(
        {
            "id": ["1", "2", "3"],
            "prompt": ["q", "q", "biased q"],
            "response_a": ["good answer", "meh", "x"],
            "response_b": ["meh", "good answer", "y"],
        }
    )
    with FakeOpenAI(responder=pairwise_responder) as server:
        out = run(PairwiseJudge(**kw(server)), table)
        dropped = run(PairwiseJudge(**kw(server), drop_ties=True), table)
        # both orders per row, 4 distinct requests per run (row 1 swapped is row 2 as given)
        assert server.total_billed == 8
        orders = {
            (section(user_text(b), "Response A"), section(user_text(b), "Response B"))
            for b in server.bodies
        }
        assert {("x", "y"), ("y", "x")} <= orders
    assert out["judge_verdict"].to_pylist() == ["a", "b", "tie"]
    assert out["judge_score"].to_pylist() == [1.0, 0.0, 0.5]
    assert out["judge_consistent"].to_pylist() == [True, True, False]
    assert out["chosen"].to_pylist() == ["good answer", "good answer", None]
    assert out["rejected"].to_pylist() == ["meh", "meh", None]
    assert isinstance(dropped, Outcome)
    assert dropped.kept["id"].to_pylist() == ["1", "2"]
    assert dropped.reason_array().to_pylist() == ["tie: the two orders disagreed"]


def test_pairwise_reward_compares_with_the_reference_column() -> None:
    with FakeOpenAI(responder=pairwise_responder) as server:
        judge = PairwiseJudge(**kw(server))
        scores = judge.reward(["q", "q"], ["good one", "bad one"], reference=["meh", "good"])
        with pytest.raises(KeyError, match="reference"):
            judge.reward(["q"], ["x"])
    assert scores == [1.0, 0.0]


# --- GroundingJudge --------------------------------------------------------------------


def grounding_responder(body: dict[str, Any]) -> str:
    """Labels each sentence of the response by whether the context contains it."""
    text = user_text(body)
    context, response = section(text, "Context"), section(text, "Response")
    claims = []
    for sentence in filter(None, (s.strip() for s in response.split("."))):
        negated = sentence.replace(" not ", " ")
        label = (
            "supported"
            if sentence in context
            else "contradicted"
            if negated in context
            else "unsupported"
        )
        claims.append({"claim": sentence, "label": label, "evidence": ""})
    return json.dumps({"claims": claims})


def test_grounding_judge_labels_claims_and_names_unsupported_ones() -> None:
    context = "Paris is the capital of France. The Seine flows through Paris."
    table = pa.table(
        {
            "id": ["ok", "made_up", "wrong", "empty"],
            "context": [context] * 4,
            "generation": [
                "Paris is the capital of France.",
                "Paris is the capital of France. Paris has 40 bridges.",
                "Paris is not the capital of France.",
                "",
            ],
        }
    )
    with FakeOpenAI(responder=grounding_responder) as server:
        out = run(GroundingJudge(**kw(server), threshold=1.0), table)
        passages = pa.table(
            {"id": ["p"], "context": [[context, "Lyon is big."]], "generation": ["Lyon is big."]}
        )
        run(GroundingJudge(**kw(server)), passages)
        asked = user_text(server.bodies[-1])
    assert (
        "[Passage 1] Paris is" in asked and "[Passage 2] Lyon is big." in asked
    )  # a list of contexts is numbered
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["ok", "empty"]
    assert out.kept["grounding_verdict"].to_pylist() == ["grounded", "no claims"]
    rejected = {r["id"]: r for r in out.rejected.to_pylist()}
    assert rejected["made_up"]["grounding_score"] == 0.5
    assert json.loads(rejected["made_up"]["grounding_unsupported"]) == ["Paris has 40 bridges"]
    assert rejected["wrong"]["grounding_verdict"] == "contradicted"
    assert rejected["made_up"]["grounding_n_claims"] == 2
    assert "not supported: Paris has 40 bridges" in out.reason_array()[0].as_py()


def test_grounding_reward_needs_the_context_column() -> None:
    with FakeOpenAI(responder=grounding_responder) as server:
        judge = GroundingJudge(**kw(server))
        # TRL also passes keywords that are not columns (trainer_state): they are ignored
        scores = judge.reward(
            ["q", "q"], ["A b.", "A b. C d."], context=["A b", "A b"], trainer_state=object()
        )
        with pytest.raises(KeyError, match="context"):
            judge.reward(["q"], ["x"], document=["y"])
    assert scores == [1.0, 0.5]


# --- StepJudge -------------------------------------------------------------------------


def step_responder(body: dict[str, Any]) -> str:
    """The first step whose arithmetic 'a+b=c' is false."""
    steps = re.findall(r"\[Step (\d+)\] (.*)", user_text(body))
    for index, text in steps:
        m = re.search(r"(\d+)\+(\d+)=(\d+)", text)
        if m and int(m[1]) + int(m[2]) != int(m[3]):
            return json.dumps({"first_wrong_step": int(index), "reason": f"{m[0]} is false"})
    return json.dumps({"first_wrong_step": -1, "reason": "all steps hold"})


def test_step_judge_reads_the_traces_steps_column() -> None:
    steps = pa.array(
        [
            [
                {"step_id": "t1#0", "text": "2+2=4"},
                {"step_id": "t1#1", "text": "4+3=8"},
                {"step_id": "t1#2", "text": "so 8"},
            ],
            [{"step_id": "t2#0", "text": "1+1=2"}, {"step_id": "t2#1", "text": "so 2"}],
        ]
    )
    table = pa.table(
        {
            "id": ["t1", "t2"],
            "question": ["q1", "q2"],
            "reasoning": ["ignored", "ignored"],
            "steps": steps,
        }
    )
    with FakeOpenAI(responder=step_responder) as server:
        out = run(StepJudge(**kw(server), threshold=1.0), table)
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["t2"]
    assert out.kept["step_rewards"].to_pylist() == [[1.0, 1.0]]
    wrong = out.rejected.to_pylist()[0]
    assert wrong["step_first_wrong"] == 1 and wrong["step_first_wrong_id"] == "t1#1"
    assert wrong["step_rewards"] == [1.0, 0.0, 0.0]
    assert wrong["step_score"] == pytest.approx(1 / 3)
    assert wrong["step_verdict"] == "wrong at step 1"
    assert out.reason_array().to_pylist() == ["wrong at step 1 (score 0.33 < 1): 4+3=8 is false"]


def test_step_judge_splits_text_and_rejects_an_out_of_range_step() -> None:
    assert split_steps("a\n\nb\nc") == ["a", "b\nc"]
    assert split_steps("a\nb") == ["a", "b"]
    assert split_steps("First 2+2=4. Then 4+1=6.") == ["First 2+2=4.", "Then 4+1=6."]
    table = pa.table(
        {"id": ["x", "y"], "question": ["q", "q"], "reasoning": ["2+2=4\n4+1=6", "one step"]}
    )

    def responder(body: dict[str, Any]) -> str:
        if "one step" in user_text(body):
            return json.dumps({"first_wrong_step": 5, "reason": "?"})
        return step_responder(body)

    with FakeOpenAI(responder=responder) as server:
        out = run(StepJudge(**kw(server)), table)
        reward = StepJudge(**kw(server)).reward(["q"], ["1+1=2\n2+2=4"])
    assert out["step_first_wrong"].to_pylist() == [1, None]
    assert out["step_score"].to_pylist() == [0.5, None]
    assert "is not a step" in out["step_error"][1].as_py()
    assert reward == [1.0]
