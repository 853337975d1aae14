"""One tool episode of `ToolRollouts`: the conversation, the environment, the calls log.

`Episode` builds each model request (tools offered, the forced `tool_choice` of the call),
applies the response (runs tool calls in the environment, or ends the turn) and turns the
finished episode into an output row. The helpers build OpenAI-style messages and spot tool
calls cut at `max_tokens`.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from assay.curate.errors import StageError
from assay.curate.llm.types import ChatRequest
from assay.curate.stage import ID

if TYPE_CHECKING:
    from assay.operators.tools.rollouts import ToolRollouts


def _call(call: dict[str, Any], k: int) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {
        "id": str(call.get("id") or f"call_{k}"),
        "type": "function",
        "function": {"name": str(function.get("name", "")), "arguments": arguments},
    }


def cut_tool_call(
    finish_reason: str | None, text: str | None, calls: list[dict[str, Any]], tool_choice: Any
) -> bool:
    """Whether a response cut at its token budget (`finish_reason == "length"`) was a tool
    call: one of its calls has arguments that are not a whole JSON object (providers return
    the cut arguments), or it has no call while the request's `tool_choice` forced one
    ("required" or a function: on the local backend the constrained JSON was cut) or while
    its text opens a `<tool_call>` block. A cut answer in prose is not a cut call."""
    if finish_reason != "length":
        return False
    if calls:
        return not all(_json_object(c["function"]["arguments"]) for c in calls)
    wants_call = tool_choice is not None and tool_choice not in ("auto", "none")
    return wants_call or "<tool_call>" in (text or "")


def _json_object(arguments: str) -> bool:
    try:
        return isinstance(json.loads(arguments), dict)
    except (json.JSONDecodeError, RecursionError):
        return False


def _name(schema: dict[str, Any]) -> str:
    return str(schema.get("function", schema).get("name"))


def allowed_tools(names: list[str]) -> dict[str, Any]:
    """OpenAI's tool choice "call one of these tools" (`allowed_tools`, mode "required")."""
    listed = [{"type": "function", "function": {"name": n}} for n in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": listed}}


# the opening of a call cut at max_tokens, kept as text: `[{"name": "f", "argu...` (the
# local backend's constrained JSON) or `<tool_call>{"name": "f", ...`
_CUT_CALL = re.compile(r'^\s*(?:<tool_call>)?\s*\[?\s*\{\s*"name"\s*:\s*"([^"\\]+)"')


def first_call_name(messages: list[dict[str, Any]]) -> str | None:
    """The function name of the first tool call in `messages` (assistant messages after a
    user turn), or of a call cut at `max_tokens` whose name was written; None if neither."""
    for m in messages:
        for call in m.get("tool_calls") or []:
            return str(call["function"]["name"])
        if m.get("role") == "assistant" and (cut := _CUT_CALL.match(m.get("content") or "")):
            return cut.group(1)
    return None


def message(role: str, content: str | None = "", **extra: Any) -> dict[str, Any]:
    """A chat message in the trajectory schema (every field present)."""
    return {
        "role": role,
        "content": content or "",
        "tool_calls": extra.get("tool_calls"),
        "tool_call_id": extra.get("tool_call_id"),
        "name": extra.get("name"),
    }


def request_messages(messages: list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The trajectory as sent to a chat API (absent fields left out)."""
    return tuple({k: v for k, v in m.items() if v is not None} for m in messages)


class Episode:
    """One episode's state between model calls (ToolRollouts.play_group drives it)."""

    def __init__(self, stage: ToolRollouts, row: dict[str, Any], k: int) -> None:
        self.stage, self.k = stage, k
        self.task_id = str(row.get(ID))
        self.env = env = stage.new_environment()
        try:
            observation = env.reset(row)
        except Exception as exc:
            raise StageError(
                stage.name,
                f"environment cannot start: {type(exc).__name__}: {exc}",
                row_id=str(row.get(ID)),
            ) from exc
        self.messages = [message("system", stage.system_prompt)] if stage.system_prompt else []
        self.messages.append(message("user", observation))
        self.turn_start = len(self.messages)  # where the current user turn's answer begins
        self.offered = env.tool_schemas()
        self.log: list[dict[str, Any]] = []
        self.finish, self.turns, self.error = "turn_limit", 0, None
        self.calls_this_turn = 0  # model calls since the last user message
        self.retries_this_turn = 0
        self.attempt = 0  # turn attempts dropped so far: each retry samples afresh
        self.dropped: list[dict[str, Any]] = []
        self.tried_first: list[str] = []  # the first tools this turn's dropped attempts called
        self._excluded: list[str] = []
        self.user_turn = 0  # user turns ended so far
        self.hinted_turns: list[int] = []  # user turns whose kept attempt had a reference hint
        self._turn_hinted = False
        self.over = False
        self._params: dict[str, Any] = {}
        self._tools: list[dict[str, Any]] = []
        self._hint: list[str] = []

    def next_request(self) -> ChatRequest:
        stage, env = self.stage, self.env
        tools = env.tool_schemas()
        # one schema per tool name, as first offered (SqlEnvironment's final_answer gains a
        # pattern once a query has run; the patterns are grammars, not what the tool is)
        names = {_name(t) for t in self.offered}
        self.offered += [t for t in tools if _name(t) not in names]
        params = stage.params(self.task_id)
        forced = stage.forced_choice(self.calls_this_turn, tools)
        if forced == "none":
            # an answer, not a call: the request offers no tools (providers and local
            # models differ in how they honour tool_choice "none"; without tools, all answer)
            tools = []
        elif forced is not None:
            params["tool_choice"] = forced
        self._excluded = []
        if forced == "required" and self.calls_this_turn == 0 and stage.retry_other_tools:
            left = [_name(t) for t in tools if _name(t) not in self.tried_first]
            if left and len(left) < len(tools):
                params["tool_choice"] = allowed_tools(left)
                self._excluded = list(self.tried_first)
        hint = self._reference_hint(forced, tools)
        if hint:
            params["tool_choice"] = allowed_tools(hint)
            self._excluded, self._turn_hinted = [], True
        self.calls_this_turn += 1
        self._params, self._tools, self._hint = params, tools, hint
        return ChatRequest(
            model=stage.model,
            messages=request_messages(self.messages),
            params=params,
            tools=tuple(tools),
            sample_index=self.k + stage.n * self.attempt,
        )

    def _reference_hint(self, forced: Any, tools: list[dict[str, Any]]) -> list[str]:
        """With `retry_reference_tools`, a retried turn's forced first call may call only the
        offered tools the environment's reference calls in this turn; [] otherwise."""
        retried_first = (
            forced == "required" and self.calls_this_turn == 0 and self.retries_this_turn
        )
        if not (retried_first and self.stage.retry_reference_tools):
            return []
        reference = set(self.env.reference_tools() or ())
        return [_name(t) for t in tools if _name(t) in reference]

    def _end_user_turn(self) -> None:
        if self._turn_hinted:
            self.hinted_turns.append(self.user_turn)
        self.user_turn, self._turn_hinted = self.user_turn + 1, False

    def apply(self, response: Any) -> None:
        """Take the model's answer to `next_request`: run its tool calls, or end the turn."""
        env, messages = self.env, self.messages
        self.turns += 1
        entry: dict[str, Any] = {
            "call": self.turns,
            "latency_s": response.latency_s,
            "cached": response.cached,
            "input_tokens": response.input_tokens,
            "output_tokens": response.output_tokens,
            "attempt": self.attempt,
        }
        if self._excluded:
            entry["excluded"] = self._excluded
        if self._hint:
            entry["hinted"] = self._hint
        self.log.append(entry)
        self.over = self.turns >= self.stage.max_turns
        if response.error is not None:
            self.finish, self.error, self.over = "error", response.error, True
            entry["error"] = response.error
            return
        entry["finish_reason"] = response.finish_reason
        calls = [_call(c, i) for i, c in enumerate(response.tool_calls or [])]
        choice = self._params.get("tool_choice") if self._tools else None
        if cut_tool_call(response.finish_reason, response.text, calls, choice):
            # the call was cut at max_tokens: kept as the text it was, never executed
            messages.append(message("assistant", response.text))
            entry["truncated"] = True
            if not self._retry("length"):
                self.finish, self.over = "length", True
            return
        messages.append(message("assistant", response.text, tool_calls=calls or None))
        if calls:
            results = (
                env.step_calls(calls)
                if hasattr(env, "step_calls")
                else [env.step(c) for c in calls]
            )
            entry["tools"] = []
            for call, result in zip(calls, results, strict=True):
                messages.append(
                    message("tool", result.content, tool_call_id=call["id"], name=result.name)
                )
                entry["tools"].append(
                    {
                        "name": result.name,
                        "arguments": result.arguments,
                        "result": result.content,
                        "error": result.error,
                        "seconds": round(result.seconds, 6),
                    }
                )
            if env.done:  # a tool ended the episode (e.g. SqlEnvironment's final_answer)
                self.finish, self.over = "answer", True
            return
        follow_up = env.end_turn(response.text)
        if follow_up is None:
            failed = getattr(env, "failed_turn", None) is not None
            if failed and self._retry("failed_turn"):
                return
            self._end_user_turn()
            self.finish, self.over = ("failed_turn" if failed else "answer"), True
            return
        self._end_user_turn()
        messages.append(message("user", follow_up))
        self.turn_start, self.calls_this_turn, self.retries_this_turn = len(messages), 0, 0
        self.tried_first = []

    def _retry(self, finish: str) -> bool:
        """Drop the current turn's attempt and play the turn again (`turn_retries`), where
        retries and model calls are left and the environment can rewind the turn."""
        if self.over or self.retries_this_turn >= self.stage.turn_retries:
            return False
        detail = self.env.retry_turn()
        if detail is None:
            return False
        self.dropped.append(
            {
                "at_message": self.turn_start,
                "finish": finish,
                "detail": detail,
                "messages": self.messages[self.turn_start :],
            }
        )
        first = first_call_name(self.messages[self.turn_start :])
        if first is not None and first not in self.tried_first:
            self.tried_first.append(first)
        del self.messages[self.turn_start :]
        self._turn_hinted = False
        self.retries_this_turn += 1
        self.attempt += 1
        self.calls_this_turn = 0
        return True

    def result(self) -> dict[str, Any]:
        env = self.env
        score = env.score()
        episode = {
            "environment": self.stage.environment,
            "calls": self.log,
            "checks": score.checks,
            "final_state": env.final_state(),
            "error": self.error,
            "dropped_attempts": self.dropped,
            "hinted_turns": self.hinted_turns,
        }
        return {
            "messages": self.messages,
            "tools": json.dumps(self.offered, ensure_ascii=False),
            "episode": json.dumps(episode, ensure_ascii=False, default=str),
            "reward": float(score.reward),
            "correct": bool(score.correct) and self.finish not in ("error", "length"),
            "turns": self.turns,
            "finish": self.finish,
        }
