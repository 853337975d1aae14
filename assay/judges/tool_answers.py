"""ToolAnswerGroundingJudge: are a tool trajectory's answers grounded in what its tools said?

Tool checks (BFCL's checker, the SQL environment's result check) grade the calls and the
state; the text a model writes between calls ("ZETA was removed from your watchlist") is
read by none of them. This judge splits each answer into claims and checks them against the
tool calls and results of the same user turn, as GroundingJudge does for one response.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from assay.curate.registry import register
from assay.judges.base import completion_text
from assay.judges.grounding import claims_judgement, grounding_call
from assay.judges.llm_judge import Call, Judgement, LLMJudge

# worst first: the verdict of a trajectory is that of its worst answer
_VERDICT_ORDER = ("contradicted", "unsupported", "grounded", "no claims")


def turn_answers(messages: Any) -> list[dict[str, Any]]:
    """The answers of a trajectory (assistant messages with text and no tool calls), each
    with its user turn (0-based), the user's message and the turn's calls before it as
    `name(arguments) -> result` lines. `messages`: OpenAI-style dicts or their JSON."""
    if isinstance(messages, str):
        messages = json.loads(messages)
    answers: list[dict[str, Any]] = []
    turn, question, calls = -1, "", []
    names: dict[str, str] = {}  # tool_call_id -> the call as written
    for m in messages or []:
        role, content = m.get("role"), m.get("content") or ""
        if role == "user":
            turn, question, calls = turn + 1, content, []
        elif role == "assistant" and m.get("tool_calls"):
            for c in m["tool_calls"]:
                f = c.get("function") or {}
                names[str(c.get("id"))] = f"{f.get('name')}({f.get('arguments') or ''})"
        elif role == "tool":
            call = names.get(str(m.get("tool_call_id")), str(m.get("name") or "tool"))
            calls.append(f"{call} -> {content}")
        elif role == "assistant" and content.strip():
            answers.append(
                {
                    "turn": max(turn, 0),
                    "question": question,
                    "calls": list(calls),
                    "answer": content,
                }
            )
    return answers


def calls_context(calls: list[str]) -> str:
    if not calls:
        return "(no tool was called in this turn)"
    return "\n".join(f"[Call {i + 1}] {c}" for i, c in enumerate(calls))


@register
class ToolAnswerGroundingJudge(LLMJudge):
    """Grounding of every answer in a tool trajectory against its own turn's tool results.

    Each assistant message with text and no tool calls is one response; its context is the
    calls made since the user's message (`name(arguments) -> result`), its question the
    user's message. One request per answer (a trajectory with none is scored 1.0, verdict
    "no answers"). The trajectory's score is its worst answer's grounded fraction and its
    verdict that answer's; an answer the judge could not label leaves the row unscored.

    Input columns: `messages_column` (the trajectory: a list of OpenAI-style messages, as
    ToolRollouts writes it, or its JSON).
    Output columns (output_column="answer_grounding"): `answer_grounding_score`,
    `_verdict`, `_rationale` ("turn 1: 0 of 1 claims supported; not supported: ..."),
    `_claims` (JSON list per answer: {turn, answer, score, claims}), `_unsupported` (JSON
    list of "turn k: claim"), `_n_claims`, `_n_answers`, `_error`, `_cost`.
    Rejects (when `threshold` is set) name the turn and the unsupported claims.

    Example: `ToolAnswerGroundingJudge(model="openai/gpt-4o-mini", threshold=1.0)` after
    `ToolRollouts` keeps trajectories whose every answer is supported by the tools.
    """

    output_column: str = "answer_grounding"
    messages_column: str = "messages"
    max_claims: int = 12

    def row_columns(self) -> list[str]:
        return [self.messages_column]

    def extra_types(self) -> dict[str, pa.DataType]:
        return {
            "claims": pa.string(),
            "unsupported": pa.string(),
            "n_claims": pa.int64(),
            "n_answers": pa.int64(),
        }

    def calls(self, row: dict[str, Any]) -> list[Call]:
        return [
            grounding_call(calls_context(a["calls"]), a["answer"], a["question"], self.max_claims)
            for a in turn_answers(row[self.messages_column])
        ]

    def judge_row(self, row: dict[str, Any], answers: list[BaseModel]) -> Judgement:
        found = turn_answers(row[self.messages_column])
        if not found:
            return Judgement(
                1.0,
                "no answers",
                "the trajectory has no answer to check",
                extra={"claims": "[]", "unsupported": "[]", "n_claims": 0, "n_answers": 0},
            )
        claims = [v.claims for v in answers]  # type: ignore[attr-defined]
        judged = [(a, claims_judgement(c)) for a, c in zip(found, claims, strict=True)]
        worst_answer, worst = min(
            judged, key=lambda p: (p[1].score, _VERDICT_ORDER.index(p[1].verdict))
        )
        listed = [
            {
                "turn": a["turn"],
                "answer": a["answer"],
                "score": j.score,
                "claims": [x.model_dump() for x in c],
            }
            for (a, j), c in zip(judged, claims, strict=True)
        ]
        unsupported = [
            f"turn {a['turn']}: {x.claim}"
            for a, c in zip(found, claims, strict=True)
            for x in c
            if x.label != "supported"
        ]
        return Judgement(
            worst.score,
            worst.verdict,
            f"turn {worst_answer['turn']}: {worst.rationale}",
            extra={
                "claims": json.dumps(listed, ensure_ascii=False),
                "unsupported": json.dumps(unsupported, ensure_ascii=False),
                "n_claims": sum(j.extra["n_claims"] for _, j in judged),
                "n_answers": len(judged),
            },
        )

    def reward_row(self, prompt: Any, completion: Any, columns: dict[str, Any]) -> dict[str, Any]:
        """TRL's conversational prompt and completion (message lists) are the trajectory."""
        if isinstance(prompt, list) and isinstance(completion, list):
            return {**columns, self.messages_column: [*prompt, *completion]}
        return {
            **columns,
            self.messages_column: [
                {"role": "user", "content": completion_text(prompt)},
                {"role": "assistant", "content": completion_text(completion)},
            ],
        }
