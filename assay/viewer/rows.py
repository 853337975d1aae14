"""What a row is: its prompt, response, reasoning, parsed output, verdicts, steps, trajectory.

Read from column names alone, following the stage contracts: `Generate` writes `<o>`,
`<o>_reasoning`, `<o>_messages`...; a verifier writes `<c>`, `<c>_score`, `<c>_reason`;
`ReasoningTraces` writes `question`, `reasoning`, `final_answer`, `steps`; `ToolRollouts`
writes `messages`, `tools`, `episode`, `reward`, `turns`, `finish`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROMPT_COLUMNS = ("question", "prompt", "instruction", "text", "input")


@dataclass
class Verdict:
    name: str
    correct: bool | None
    score: float | None
    reason: str | None


@dataclass
class RowView:
    prompt: list[dict[str, Any]] | str | None = None
    response: str | None = None
    response_column: str | None = None
    reasoning: str | None = None
    parsed: Any = None
    final_answer: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    steps: list[dict[str, str]] = field(default_factory=list)
    is_trajectory: bool = False
    shown: set[str] = field(default_factory=set)


def loads(value: Any) -> Any:
    """JSON text to a value; anything else (or invalid JSON) as it is."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def pretty(value: Any) -> str:
    value = loads(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return "" if value is None else str(value)


def interpret(row: dict[str, Any]) -> RowView:
    view = RowView()
    cols = set(row)
    for col in sorted(cols):
        if col.endswith("_messages") and col[: -len("_messages")] in cols:
            base = col[: -len("_messages")]
            view.prompt = loads(row[col])
            view.response, view.response_column = row.get(base), base
            view.reasoning = row.get(f"{base}_reasoning")
            view.shown |= {col, base, f"{base}_reasoning"}
            break
    if view.prompt is None:
        for col in PROMPT_COLUMNS:
            if row.get(col) is not None:
                view.prompt, view.shown = str(row[col]), view.shown | {col}
                break
    if view.reasoning is None and isinstance(row.get("reasoning"), str):
        view.reasoning = row["reasoning"]
        view.shown.add("reasoning")
    if row.get("parsed") is not None:
        view.parsed, view.shown = loads(row["parsed"]), view.shown | {"parsed"}
    if row.get("final_answer") is not None:
        view.final_answer, view.shown = str(row["final_answer"]), view.shown | {"final_answer"}
    for col in sorted(cols):
        has_detail = f"{col}_score" in cols or f"{col}_reason" in cols
        if isinstance(row[col], bool) and has_detail:
            view.verdicts.append(
                Verdict(col, row[col], row.get(f"{col}_score"), row.get(f"{col}_reason"))
            )
            view.shown |= {col, f"{col}_score", f"{col}_reason"}
        elif col.endswith("_rationale") and col not in view.shown:
            base = col[: -len("_rationale")]
            verdict = row.get(base) if isinstance(row.get(base), bool) else None
            view.verdicts.append(Verdict(base, verdict, row.get(f"{base}_score"), row[col]))
            view.shown |= {col, base, f"{base}_score"}
    view.steps = steps_of(row)
    if view.steps:
        view.shown.add("steps")
    view.is_trajectory = is_trajectory(row)
    return view


def steps_of(row: dict[str, Any]) -> list[dict[str, str]]:
    """The `steps` column (list<struct<step_id, text>>), or [] when the row has none."""
    steps = loads(row.get("steps"))
    if not isinstance(steps, list):
        return []
    out = []
    for k, step in enumerate(steps):
        if isinstance(step, dict) and "text" in step:
            out.append(
                {
                    "step_id": str(step.get("step_id") or f"{row.get('id')}#{k}"),
                    "text": str(step["text"] or ""),
                }
            )
    return out


def is_trajectory(row: dict[str, Any]) -> bool:
    messages = loads(row.get("messages"))
    return isinstance(messages, list) and "episode" in row


@dataclass
class Turn:
    """One assistant turn: what it said, the tools it called and what they returned."""

    index: int
    content: str
    calls: list[dict[str, Any]]
    results: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    seconds: float | None = None


@dataclass
class Trajectory:
    preamble: list[dict[str, Any]]  # system and first user messages
    turns: list[Turn]
    tools: list[dict[str, Any]]
    episode: Any
    summary: dict[str, Any]
    unattached_checks: list[dict[str, Any]]


def trajectory(row: dict[str, Any]) -> Trajectory:
    """The episode turn by turn: each assistant message with its tool calls (arguments parsed
    from their JSON strings), the tool results that answer them, and the state checks."""
    messages = [m for m in (loads(row.get("messages")) or []) if isinstance(m, dict)]
    episode = loads(row.get("episode"))
    checks, timings = _episode_parts(episode)
    preamble: list[dict[str, Any]] = []
    turns: list[Turn] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            calls = []
            for call in m.get("tool_calls") or []:
                fn = (call or {}).get("function") or {}
                raw = fn.get("arguments")
                args = loads(raw) if isinstance(raw, str) else raw
                calls.append(
                    {
                        "id": call.get("id"),
                        "name": fn.get("name"),
                        "arguments": pretty(args),
                        "valid_json": not isinstance(args, str) or raw in ("", None),
                    }
                )
            turns.append(Turn(len(turns), m.get("content") or "", calls, [], []))
        elif role == "tool" and turns:
            turns[-1].results.append(
                {
                    "name": m.get("name"),
                    "id": m.get("tool_call_id"),
                    "content": pretty(m.get("content")),
                }
            )
        elif not turns:
            preamble.append(m)
        else:  # a user or system message between turns (a simulated user)
            turns[-1].results.append({"name": role, "id": None, "content": m.get("content") or ""})
    # checks number turns from 0 or from 1: read which from the numbers themselves
    base = 0 if any(c.get("turn") == 0 for c in checks) else 1
    unattached = []
    for check in checks:
        k = check.get("turn")
        if isinstance(k, int) and 0 <= k - base < len(turns):
            turns[k - base].checks.append(check)
        else:
            unattached.append(check)
    for k, seconds in timings.items():
        if 0 <= k - base < len(turns):
            turns[k - base].seconds = seconds
    tools = loads(row.get("tools"))
    summary = {k: row.get(k) for k in ("reward", "correct", "turns", "finish") if k in row}
    return Trajectory(
        preamble, turns, tools if isinstance(tools, list) else [], episode, summary, unattached
    )


def _episode_parts(episode: Any) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """State checks and per-turn seconds from the episode JSON (a list of checks, or an
    object with `state_checks`/`checks` and `turns`/`timings`)."""
    checks: list[dict[str, Any]] = []
    timings: dict[int, float] = {}
    if isinstance(episode, list):
        checks = [c for c in episode if isinstance(c, dict) and "passed" in c]
    elif isinstance(episode, dict):
        for key in ("state_checks", "checks"):
            if isinstance(episode.get(key), list):
                checks = [c for c in episode[key] if isinstance(c, dict)]
                break
        for key in ("turns", "timings"):
            for t in episode.get(key) or []:
                if isinstance(t, dict) and isinstance(t.get("turn"), int):
                    seconds = t.get("seconds", t.get("latency_s"))
                    if isinstance(seconds, (int, float)):
                        timings[t["turn"]] = float(seconds)
    return checks, timings
