"""ToolEnvironment: the task a model works on with tools, one episode at a time.

An environment is reset with a task row and returns the first user message; the model's tool
calls go to `step`, which returns what the tool said (errors included: a bad call is
information for the model, never an exception in the rollout); `end_turn(answer)` is called
when the model answers without calling a tool and returns the next user message of a
multi-turn task, or None when the task is over (`done`). `final_state()` is what checks
compare, and `score()` grades the episode. An environment that can rewind a turn
(`retry_turn`, BfclEnvironment) lets `ToolRollouts(turn_retries=k)` play a failed turn again.

Tools are the methods decorated with `@tool` (see api.py): their JSON schemas come from their
type hints and docstrings, so the same methods serve TRL's `environment_factory` (trl.py).
"""

from __future__ import annotations

import inspect
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assay.operators.tools.api import tool_schema

MAX_RESULT_CHARS = 4000  # a tool result longer than this is cut (the model's context is short)


@dataclass
class ToolResult:
    """What one tool call gave back: the text the model sees, whether it failed, timing."""

    name: str
    arguments: dict[str, Any]
    content: str
    error: bool = False
    seconds: float = 0.0


@dataclass
class EpisodeScore:
    """An episode's grade: `reward` in [0, 1], `correct`, and the checks behind them
    (`[{"turn": k, "passed": bool, "detail": str}]`)."""

    reward: float
    correct: bool
    checks: list[dict[str, Any]] = field(default_factory=list)


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict (OpenAI sends a JSON string); ValueError if not one."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"arguments are not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"arguments must be a JSON object, got {type(raw).__name__}")
    return raw


def result_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"... [cut: {len(text)} characters in all]"
    return text


class ToolEnvironment(ABC):
    """Base class of tool environments. Subclasses implement `reset`, `score` and tools."""

    def __init__(self) -> None:
        self.done = False
        self.results: list[ToolResult] = []

    @abstractmethod
    def reset(self, row: dict[str, Any]) -> str:
        """Start an episode for `row`; return the first user message."""

    @abstractmethod
    def score(self) -> EpisodeScore:
        """Grade the episode played since the last reset."""

    def final_state(self) -> dict[str, Any]:
        """The state checks compare (JSON-serialisable)."""
        return {}

    def end_turn(self, answer: str | None) -> str | None:
        """The model answered without a tool call: the next user message, or None (done)."""
        self.done = True
        return None

    def retry_turn(self) -> str | None:
        """Undo the current user turn (a turn that failed its check, or one still being
        played) so the same user message can be played again from the state before it.
        Returns why the attempt was dropped (a failed check's detail, or ""), or None where
        the environment cannot rewind a turn (the default): `ToolRollouts(turn_retries=k)`
        then ends the episode as it would without retries."""
        return None

    def reference_tools(self) -> list[str] | None:
        """The tool names the current turn's reference solution calls (BFCL: its ground
        truth), for `ToolRollouts(retry_reference_tools=True)`, or None where the
        environment has no reference (the default)."""
        return None

    # --- tools -------------------------------------------------------------------------

    def tools(self) -> dict[str, Callable[..., Any]]:
        """The callable tools by name (default: methods marked with `@tool`)."""
        found: dict[str, Callable[..., Any]] = {}
        for name, member in inspect.getmembers(type(self), predicate=inspect.isfunction):
            if getattr(member, "__assay_tool__", False):
                found[name] = getattr(self, name)
        return found

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The OpenAI tool schemas offered to the model."""
        return [tool_schema(fn, name) for name, fn in self.tools().items()]

    def step(self, tool_call: dict[str, Any]) -> ToolResult:
        """Run one OpenAI-style tool call; failures come back as an error result."""
        function = tool_call.get("function", tool_call)
        name = str(function.get("name", ""))
        start = time.perf_counter()
        try:
            arguments = parse_arguments(function.get("arguments"))
        except ValueError as exc:
            return self._record(ToolResult(name, {}, f"Error: {exc}", True))
        tools = self.tools()
        if name not in tools:
            known = ", ".join(sorted(tools))
            return self._record(
                ToolResult(name, arguments, f"Error: no tool named {name!r} (tools: {known})", True)
            )
        try:
            value = self.call(name, tools[name], arguments)
            result = ToolResult(name, arguments, result_text(value))
        except Exception as exc:  # the model's mistake: it reads the error and may retry
            result = ToolResult(name, arguments, f"Error: {type(exc).__name__}: {exc}", True)
        result.seconds = time.perf_counter() - start
        return self._record(result)

    def call(self, name: str, fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        """Call one tool (subclasses may execute differently, e.g. through BFCL's executor)."""
        return fn(**arguments)

    def _record(self, result: ToolResult) -> ToolResult:
        self.results.append(result)
        return result
