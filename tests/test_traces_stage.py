"""ReasoningTraces on scripted teacher answers from the fake OpenAI server: verification keeps
exactly the correct samples, pass rates, the three keep policies, steps, rejects; budget
forcing's rounds (Wait on an early stop, the answer after the end-of-thinking marker)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from openai_server import FakeOpenAI

from assay.curate.llm.types import sample_seed
from assay.curate.pipeline import Pipeline
from assay.curate.recipes import parse_recipe
from assay.models.budget import BudgetForcing
from assay.operators.traces import ReasoningTraces, SegmentSteps
from assay.operators.traces.split import segment_steps, split_trace

FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.05, "retry_jitter_s": 0.01, "max_attempts": 2}
SEED = 7
N = 5


def problems() -> pa.Table:
    pairs = [(2, 3), (10, 4), (6, 6)]
    return pa.table(
        {
            "id": [f"p{i}" for i in range(len(pairs))],
            "question": [f"What is {a}+{b}?" for a, b in pairs],
            "answer": [a + b for a, b in pairs],
        }
    )


def sample_of(body: dict[str, Any]) -> int:
    seeds = {sample_seed(SEED, k): k for k in range(N)}
    return seeds[body["seed"]]


# what sample k of "What is a+b?" answers, and whether that is right; p2 ("6+6") is always
# answered wrong, so it has no correct sample at all
def scripted(a: int, b: int, k: int) -> tuple[str, bool]:
    s = a + b
    if a == 6:
        return f"{a} and {b} make {s + 2}.\nFinal answer: {s + 2}", False
    answers = [
        (f"{a} plus {b} is {s}.\nFinal answer: {s}", True),
        (f"{a} plus {b} is {s - 1}.\nFinal answer: {s - 1}", False),
        (
            f"First I take {a}.\nThen I add {b} to it, one by one.\nSo I get {s}.\nThe answer is {s}.",
            True,
        ),
        (f"<think>{a} plus {b} is {s}.</think>Answer: {s}", True),
        (f"I am not sure what {a}+{b} is.", False),
    ]
    return answers[k]


def responder(body: dict[str, Any]) -> str:
    q = body["messages"][-1]["content"]
    a, b = map(int, re.findall(r"\d+", q))
    return scripted(a, b, sample_of(body))[0]


def traces(server: FakeOpenAI, **kw: Any) -> ReasoningTraces:
    args: dict[str, Any] = {
        "model": "openai/teacher",
        "api_base": server.base_url,
        "api_key": "sk-test",
        "n": N,
        "seed": SEED,
        "temperature": 0.8,
        **FAST,
    }
    args.update(kw)
    return ReasoningTraces(**args)


def expected_correct() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pid, q in zip(
        problems()["id"].to_pylist(), problems()["question"].to_pylist(), strict=True
    ):
        a, b = map(int, re.findall(r"\d+", q))
        out[pid] = [k for k in range(N) if scripted(a, b, k)[1]]
    return out


def test_verification_keeps_exactly_the_correct_samples(workspace: Path) -> None:
    with FakeOpenAI(responder=responder) as server:
        result = Pipeline([traces(server, keep="all")]).run(
            problems(), workspace=workspace, progress="quiet"
        )
    out = result.to_arrow()
    want = {f"{p}/s{k}" for p, ks in expected_correct().items() for k in ks}
    assert set(out["id"].to_pylist()) == want
    assert all(out["correct"].to_pylist())
    assert set(out["parent_id"].to_pylist()) == {"p0", "p1"}
    rows = {r["id"]: r for r in out.to_pylist()}
    # pass rate: the share of a problem's samples that verified
    assert rows["p0/s0"]["pass_rate"] == pytest.approx(len(expected_correct()["p0"]) / N)
    # reasoning split from the final answer, for the three answer styles
    assert rows["p0/s0"]["reasoning"] == "2 plus 3 is 5." and rows["p0/s0"]["final_answer"] == "5"
    assert rows["p1/s2"]["final_answer"] == "14"
    assert rows["p1/s3"]["reasoning"] == "10 plus 4 is 14."  # <think> block
    assert rows["p1/s3"]["final_answer"] == "14"
    # steps: one per line, stable ids "<row id>#<k>"
    assert [s["step_id"] for s in rows["p0/s2"]["steps"]] == ["p0/s2#0", "p0/s2#1", "p0/s2#2"]
    assert rows["p0/s2"]["steps"][1]["text"] == "Then I add 3 to it, one by one."

    rejects = result.rejects().to_pylist()
    by_id = {r["id"]: r for r in rejects}
    assert set(by_id) == {f"{p}/s{k}" for p in ("p0", "p1", "p2") for k in range(N)} - want
    assert by_id["p0/s1"]["_reason"] == "wrong answer (got 4, gold 5)"
    assert by_id["p2/s0"]["pass_rate"] == 0.0  # a problem nobody solved: difficulty 0
    assert by_id["p0/s4"]["correct"] is False


def test_keep_shortest_and_distinct(workspace: Path) -> None:
    with FakeOpenAI(responder=responder) as server:
        shortest = Pipeline([traces(server, keep="shortest")]).run(
            problems(), workspace=workspace, progress="quiet"
        )
        distinct = Pipeline([traces(server, keep="distinct", distinct_threshold=0.5)]).run(
            problems(), workspace=workspace, progress="quiet"
        )
        billed = server.total_billed
    assert billed == 3 * N  # the second run came from the request cache
    assert shortest.to_arrow()["id"].to_pylist() == ["p0/s0", "p1/s0"]
    reasons = {r["id"]: r["_reason"] for r in shortest.rejects().to_pylist()}
    assert reasons["p0/s2"] == "longer than the shortest correct trace (p0/s0)"
    # s0 and s3 share their reasoning ("a plus b is s."): one collapses; s2 differs and stays
    assert sorted(distinct.to_arrow()["id"].to_pylist()) == ["p0/s0", "p0/s2", "p1/s0", "p1/s2"]
    dreasons = {r["id"]: r["_reason"] for r in distinct.rejects().to_pylist()}
    assert dreasons["p0/s3"] == "near duplicate of p0/s0 (jaccard 1.00)"


def test_keep_incorrect_and_recipe(workspace: Path) -> None:
    with FakeOpenAI(responder=responder) as server:
        recipe = f"""
name: traces-test
stages:
  - ReasoningTraces:
      model: openai/teacher
      api_base: {server.base_url}
      api_key: sk-test
      n: {N}
      seed: {SEED}
      keep: all
      keep_incorrect: true
      max_attempts: 2
"""
        result = parse_recipe(recipe).run(problems(), workspace=workspace, progress="quiet")
    out = result.to_arrow()
    assert out.num_rows == 3 * N
    correct = dict(zip(out["id"].to_pylist(), out["correct"].to_pylist(), strict=True))
    want = {f"{p}/s{k}" for p, ks in expected_correct().items() for k in ks}
    assert {i for i, c in correct.items() if c} == want


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ValueError, match="unknown verifier 'Nope'"):
        ReasoningTraces(model="openai/x", verifier="Nope")
    with pytest.raises(ValueError, match="is not a Verifier"):
        ReasoningTraces(model="openai/x", verifier="ExactDedupe")
    with pytest.raises(ValueError, match="min_thinking_tokens"):
        BudgetForcing(max_thinking_tokens=8, min_thinking_tokens=9)


def test_split_and_steps_helpers() -> None:
    assert split_trace("no marker at all", None) == ("", "no marker at all")
    assert split_trace("a\nb\n#### 1,200", None) == ("a\nb", "1,200")
    assert split_trace("x = 3\n\\boxed{3}", None) == ("x = 3", "3")
    assert segment_steps("One. Two three. 4 is next.", "r", "line") == [
        {"step_id": "r#0", "text": "One."},
        {"step_id": "r#1", "text": "Two three."},
        {"step_id": "r#2", "text": "4 is next."},
    ]
    table = pa.table({"id": ["a", "b"], "reasoning": ["x\ny", None]})
    steps = SegmentSteps().map(table)["steps"].to_pylist()
    assert steps == [[{"step_id": "a#0", "text": "x"}, {"step_id": "a#1", "text": "y"}], []]


def budget_responder(bodies: list[dict[str, Any]]):
    """Thinks in short bursts: "step." per round; answers "5" after the end marker."""

    def respond(body: dict[str, Any]) -> str:
        bodies.append(body)
        prefix = body["messages"][-1]["content"]
        if prefix.endswith("Final answer: "):
            return "5"
        return "step."

    return respond


@pytest.mark.parametrize("transport", ["http", "litellm"])
def test_budget_forcing_rounds_through_the_client(workspace: Path, transport: str) -> None:
    bodies: list[dict[str, Any]] = []
    budget = {"max_thinking_tokens": 64, "min_thinking_tokens": 5, "max_waits": 3}
    with FakeOpenAI(responder=budget_responder(bodies)) as server:
        stage = traces(server, n=1, transport=transport, budget=budget, keep="all")
        result = Pipeline([stage]).run(
            problems().slice(0, 1), workspace=workspace, progress="quiet"
        )
    row = result.to_arrow().to_pylist()[0]
    # the fake server bills len(text) // 4 + 1 = 2 tokens per "step.": each early stop under
    # 5 tokens gets "Wait" until 6 tokens, then the answer round
    prefixes = [b["messages"][-1]["content"] for b in bodies]
    assert prefixes == [
        "",
        "step.\nWait",
        "step.\nWaitstep.\nWait",
        "step.\nWaitstep.\nWaitstep.\nFinal answer: ",
    ]
    assert all(b["continue_final_message"] is True for b in bodies)
    assert bodies[0]["stop"] == ["Final answer:"]
    assert row["thinking_tokens"] == 6 and row["budget_waits"] == 2
    assert row["budget_forced"] is False
    assert row["final_answer"] == "5" and row["correct"] is True
    assert row["reasoning"] == "step.\nWaitstep.\nWaitstep."


def test_a_correct_answer_without_reasoning_is_not_a_trace(workspace: Path) -> None:
    def bare_then_reasoned(body: dict[str, Any]) -> str:
        return "Final answer: 5" if sample_of(body) == 0 else "2 plus 3 is 5.\nFinal answer: 5"

    with FakeOpenAI(responder=bare_then_reasoned) as server:
        result = Pipeline([traces(server, n=2, keep="shortest")]).run(
            problems().slice(0, 1), workspace=workspace, progress="quiet"
        )
    row = result.to_arrow().to_pylist()
    assert [r["id"] for r in row] == ["p0/s1"] and row[0]["pass_rate"] == 1.0
    reasons = {r["id"]: r["_reason"] for r in result.rejects().to_pylist()}
    assert reasons == {"p0/s0": "correct answer without reasoning"}
