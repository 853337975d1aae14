"""ToolAnswerGroundingJudge through the fake OpenAI server: each answer of a tool trajectory
is checked against its own turn's calls and results; the worst answer decides."""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa
from openai_server import FakeOpenAI

from assay.curate.stage import Outcome
from assay.judges.llm_judge import run_sync
from assay.judges.tool_answers import ToolAnswerGroundingJudge, turn_answers

FAST = {"max_attempts": 1, "api_key": "sk-test-judge", "model": "openai/fake"}


def section(text: str, name: str) -> str:
    return text.split(f"[{name}]\n", 1)[1].split("\n\n", 1)[0]


def ticker_responder(body: dict[str, Any]) -> str:
    """One claim per sentence: supported when every ticker it names is in the context,
    contradicted when it says a ticker the context lists was removed."""
    text = body["messages"][-1]["content"]
    context, response = section(text, "Context"), section(text, "Response")
    claims = []
    for sentence in filter(None, (s.strip() for s in response.split("."))):
        tickers = re.findall(r"\b[A-Z]{3,5}\b", sentence)
        known = all(t in context for t in tickers)
        label = "supported" if known else "unsupported"
        if known and "removed" in sentence:
            label = "contradicted"
        claims.append({"claim": sentence, "label": label, "evidence": ""})
    return json.dumps({"claims": claims})


def call(k: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": f"call_{k}", "type": "function", "function": function}


def trajectory(first_answer: str, second_answer: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Add TSLA to my watchlist."},
        {"role": "assistant", "content": "", "tool_calls": [call(0, "add_to_watchlist", {})]},
        {"role": "tool", "content": '{"watchlist": ["NVDA", "TSLA"]}', "tool_call_id": "call_0"},
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": "Which stocks are in the tech sector?"},
        {"role": "assistant", "content": "", "tool_calls": [call(1, "get_available_stocks", {})]},
        {"role": "tool", "content": '["AAPL", "NVDA"]', "tool_call_id": "call_1"},
        {"role": "assistant", "content": second_answer},
    ]


def test_each_answer_is_checked_against_its_own_turns_tool_results() -> None:
    rows = {
        "grounded": trajectory("Your watchlist has NVDA and TSLA.", "AAPL and NVDA are tech."),
        "removed": trajectory("TSLA was added.", "NVDA was removed."),
        "other_turn": trajectory("TSLA was added.", "TSLA is a tech stock."),
        "calls_only": trajectory("", "")[:3],
    }
    table = pa.table({"id": list(rows), "messages": list(rows.values())})
    with FakeOpenAI(responder=ticker_responder) as server:
        judge = ToolAnswerGroundingJudge(**FAST, api_base=server.base_url, threshold=1.0)
        out = run_sync(judge.aprocess(table))
        asked = [b["messages"][-1]["content"] for b in server.bodies]
    # one request per answer: 2 + 2 + 2 + 0, the two identical "TSLA was added." asked once
    assert len(asked) == len(set(asked)) == 5
    second = [a for a in asked if "Which stocks" in a]
    assert all(
        section(a, "Context") == '[Call 1] get_available_stocks({}) -> ["AAPL", "NVDA"]'
        for a in second
    )  # turn 1's context holds its own call and result, not turn 0's
    assert isinstance(out, Outcome)
    kept = {r["id"]: r for r in out.kept.to_pylist()}
    assert set(kept) == {"grounded", "calls_only"}
    assert kept["grounded"]["answer_grounding_verdict"] == "grounded"
    assert kept["grounded"]["answer_grounding_n_answers"] == 2
    assert kept["calls_only"]["answer_grounding_verdict"] == "no answers"
    assert kept["calls_only"]["answer_grounding_score"] == 1.0
    rejected = {r["id"]: r for r in out.rejected.to_pylist()}
    removed = rejected["removed"]
    assert removed["answer_grounding_verdict"] == "contradicted"
    assert removed["answer_grounding_score"] == 0.0
    assert removed["answer_grounding_rationale"].startswith("turn 1: 0 of 1 claims supported")
    assert json.loads(removed["answer_grounding_unsupported"]) == ["turn 1: NVDA was removed"]
    per_answer = json.loads(removed["answer_grounding_claims"])
    assert [(a["turn"], a["score"]) for a in per_answer] == [(0, 1.0), (1, 0.0)]
    # TSLA is in turn 0's result only: turn 1 cannot lean on it
    assert rejected["other_turn"]["answer_grounding_verdict"] == "unsupported"
    reason = out.reason_array().to_pylist()[1]
    assert reason.startswith("unsupported (score 0.00 < 1): turn 1: 0 of 1 claims supported")
    assert reason.endswith("not supported: TSLA is a tech stock")


def test_turn_answers_reads_json_trajectories_and_skips_text_beside_calls() -> None:
    messages = trajectory("TSLA was added.", "Done.")
    messages[1]["content"] = "Let me add it."  # text that goes with a call is not an answer
    found = turn_answers(json.dumps(messages))
    assert [(a["turn"], a["answer"]) for a in found] == [(0, "TSLA was added."), (1, "Done.")]
    assert found[0]["calls"] == ['add_to_watchlist({}) -> {"watchlist": ["NVDA", "TSLA"]}']
    assert found[1]["question"] == "Which stocks are in the tech sector?"


def test_reward_reads_trls_conversational_prompt_and_completion() -> None:
    messages = trajectory("TSLA was added.", "AAPL is tech.")
    prompt, completion = messages[:1], messages[1:4]
    bad = [*messages[1:3], {"role": "assistant", "content": "MSFT was added."}]
    with FakeOpenAI(responder=ticker_responder) as server:
        judge = ToolAnswerGroundingJudge(**FAST, api_base=server.base_url)
        assert judge.reward([prompt, prompt], [completion, bad]) == [1.0, 0.0]
