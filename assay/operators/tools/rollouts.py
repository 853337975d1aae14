"""ToolRollouts: multi-turn tool-use episodes, verified and stored whole.

For each task row and each of `n` samples, a fresh environment is reset with the row; the
model is asked (OpenAI chat with `tools`), its `tool_calls` run in the environment and go back
as `tool` messages, until it answers without a tool call and the task has no further user
turn, or `max_turns` model calls have been made. Every model call goes through the shared LLM
client (rate limits, retries, the request cache: a re-run or resumed run replays stored
answers and re-executes the tools, so trajectories are reproduced without paying again).
The local model's `<tool_call>` output is parsed into `tool_calls` by its backend.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import zlib
from typing import Any

import pyarrow as pa
from pydantic import PrivateAttr

from assay.curate.errors import StageError
from assay.curate.llm.stage_client import UsesLLM
from assay.curate.llm.types import ChatRequest
from assay.curate.registry import register
from assay.curate.stage import ID, PARENT_ID, AsyncStage
from assay.operators.tools.environment import ToolEnvironment

ENVIRONMENTS = {
    "sql": "assay.operators.tools.sql_env:SqlEnvironment",
    "bfcl": "assay.operators.tools.bfcl_env:BfclEnvironment",
}

TOOL_CALL = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
OUTPUT_TYPES = {
    "messages": pa.list_(MESSAGE),
    "tools": pa.string(),
    "episode": pa.string(),
    "reward": pa.float64(),
    "correct": pa.bool_(),
    "turns": pa.int32(),
    "finish": pa.string(),
}


def environment_class(name: str) -> type[ToolEnvironment]:
    """`sql`, `bfcl`, or `package.module:Class` (a ToolEnvironment subclass)."""
    target = ENVIRONMENTS.get(name, name)
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"unknown environment {name!r}: use {', '.join(ENVIRONMENTS)} or 'module:Class' ({exc})"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, ToolEnvironment)):
        raise ValueError(f"environment {name!r} is not a ToolEnvironment subclass")
    return cls


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


def task_seed(seed: int, task_id: str) -> int:
    """The seed of one task's episodes: `seed` mixed with the task id, so tasks whose prompts
    differ by a word (How many products / orders are there?) do not replay the same draws
    (sample k of every task would otherwise share one seed)."""
    return (seed * 1_000_003 + zlib.crc32(task_id.encode())) % 2**31


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


@register
class ToolRollouts(AsyncStage, UsesLLM):
    """Run `n` multi-turn tool episodes per task row in a tool environment and score them.

    `environment` is `sql` (SqlEnvironment), `bfcl` (BfclEnvironment) or `module:Class`;
    `environment_kwargs` go to its constructor (e.g. `{database: intern_sql}`).
    `force_tools: k` sends the first k model calls after each user message with
    `tool_choice: required` (a small model that never calls tools by itself is made to);
    `force_tools: [list_tables, describe_table, run_query, none]` forces those tools in
    order, then an answer (a call sent without tools).

    Input columns: what the environment reads (sql: `question`, `gold_sql`; bfcl: `id`).
    Output columns: `id` (`<task id>/r<k>`), `parent_id` (the task id), `messages` (the
    whole trajectory: system, user, assistant with `tool_calls`, `tool` results; arguments
    as JSON strings), `tools` (JSON: the tool schemas offered), `episode` (JSON: per-call
    timings and tool results, `checks` `[{"turn", "passed", "detail"}]`, the final state),
    `reward` (float), `correct` (bool), `turns` (model calls), `finish` ("answer",
    "failed_turn" (the environment ended the episode at a failed turn, e.g.
    `BfclEnvironment(stop_at_failed_turn=True)`), "turn_limit", "length" or "error"); the
    task's other columns are kept. Every call in
    `episode.calls` records the response's `finish_reason`.
    A tool call cut at `max_tokens` (see `cut_tool_call`) ends the episode with
    `finish="length"`, `correct=false`: it is stored as the assistant's text and never
    executed or repaired into a call the model did not finish. An answer in prose cut at
    `max_tokens` is still the turn's answer (its call says `finish_reason: "length"`).
    Rejects: none (failed episodes are kept with `finish="error"` or `"length"`,
    `correct=false`: filter with a verifier or on `correct`).

    Example:

        ToolRollouts(model="local/smollm2-135m", environment="sql", n=4, max_turns=6,
                     temperature=0.7, max_tokens=128)
        # {"id": "shop-0", "question": "How many customers live in Lyon?", "gold_sql": ...}
        # -> rows shop-0/r0 .. shop-0/r3 with their messages, reward and correct
    """

    environment: str = "sql"
    environment_kwargs: dict[str, Any] = {}
    system_prompt: str | None = None
    n: int = 1
    # model calls per episode: a 135M model can loop on tool calls; BFCL allows 20 per turn
    max_turns: int = 8
    temperature: float | None = None
    max_tokens: int | None = 256
    # each task's episodes use a seed derived from this one and the task id (`task_seed`);
    # episode k of a task samples with that seed's k-th sample seed
    seed: int | None = None
    generation_kwargs: dict[str, Any] = {}
    # the first model calls after each user message are sent with a forced tool_choice (on
    # the local backend: constrained decoding to a tool call): `k` -> "required" for the
    # first k calls; a list -> call i uses entry i: a tool name (that tool), "required" or
    # "none" (an answer: the call is sent without tools);
    # later calls use generation_kwargs' tool_choice (auto by default), so the model can answer
    force_tools: int | list[str] = 0
    # how many tasks play at once (each task's n episodes together, in lockstep); 0: no
    # limit. None: on a local model max(1, 8 // n) (a batch of one task's n episodes shares
    # the task's prompt prefix, tool schemas and task, computed once; rows of other tasks
    # each bring theirs, thousands of tokens on BFCL), every task of the batch otherwise
    concurrent_tasks: int | None = None

    creates_rows = True
    _env_cls: type[ToolEnvironment] | None = PrivateAttr(default=None)
    # one semaphore per (event loop, limit); closed loops' are dropped when a new loop comes
    _gates: dict[Any, dict[int, asyncio.Semaphore]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        if self.n < 1 or self.max_turns < 1:
            raise ValueError("n and max_turns must be at least 1")
        if self.concurrent_tasks is not None and self.concurrent_tasks < 0:
            raise ValueError("concurrent_tasks must be 0 (no limit) or more")
        if isinstance(self.force_tools, int) and self.force_tools < 0:
            raise ValueError("force_tools must be 0 or more, or a list of tool names")
        self._env_cls = environment_class(self.environment)

    def forced_choice(self, k: int, tools: list[dict[str, Any]]) -> Any:
        """The tool_choice of the k-th model call (from 0) after a user message, or None."""
        plan = self.force_tools
        if isinstance(plan, int):
            return "required" if k < plan and tools else None
        if k >= len(plan) or not tools:
            return None
        if plan[k] in ("required", "auto", "none"):
            return plan[k]
        names = {t.get("function", t).get("name") for t in tools}
        if plan[k] not in names:
            return "required"  # the named tool is not offered (yet): any tool
        return {"type": "function", "function": {"name": plan[k]}}

    def params(self, task_id: str | None = None) -> dict[str, Any]:
        """Generation parameters; with `seed` and a task id, the task's own seed."""
        seed = self.seed
        if seed is not None and task_id is not None:
            seed = task_seed(seed, task_id)
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": seed}
        params.update(self.generation_kwargs)
        return {k: v for k, v in params.items() if v is not None}

    def new_environment(self) -> ToolEnvironment:
        assert self._env_cls is not None
        return self._env_cls(**self.environment_kwargs)

    async def episode(self, row: dict[str, Any], k: int) -> dict[str, Any]:
        """One episode of `row` (sample `k`), as an output row."""
        return (await self.play_group([(row, k)]))[0]

    async def play_group(self, samples: list[tuple[dict[str, Any], int]]) -> list[dict[str, Any]]:
        """Play the episodes of `samples` ((row, sample index) pairs) in lockstep: each
        round, the next model call of every live episode goes out together
        (`client.complete_many`), so a local backend gets them in one batch, whose shared
        prompt prefix (system prompt, tool schemas, task) it computes once."""
        episodes = [_Episode(self, row, k) for row, k in samples]
        while live := [e for e in episodes if not e.over]:
            requests = [e.next_request() for e in live]
            responses = await self.client.complete_many(requests)
            for e, response in zip(live, responses, strict=True):
                e.apply(response)
        return [e.result() for e in episodes]

    def _task_gate(self) -> asyncio.Semaphore | None:
        """The semaphore that lets `concurrent_tasks` tasks play at once in this event loop
        (shared by every batch in flight), or None for no limit."""
        limit = self.concurrent_tasks
        if limit is None:
            limit = max(1, 8 // self.n) if self.model.startswith("local/") else 0
        if limit <= 0:
            return None
        loop = asyncio.get_running_loop()
        if loop not in self._gates:
            self._gates = {k: v for k, v in self._gates.items() if not k.is_closed()}
        per_loop = self._gates.setdefault(loop, {})
        if limit not in per_loop:
            per_loop[limit] = asyncio.Semaphore(limit)
        return per_loop[limit]

    async def _play_task(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        gate = self._task_gate()
        if gate is None:
            return await self.play_group([(row, k) for k in range(self.n)])
        async with gate:
            return await self.play_group([(row, k) for k in range(self.n)])

    async def aprocess(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        groups = await asyncio.gather(*(self._play_task(row) for row in rows))
        episodes = [e for group in groups for e in group]
        keep = [c for c in table.column_names if c not in (*OUTPUT_TYPES, ID, PARENT_ID)]
        take = pa.array([i for i in range(len(rows)) for _ in range(self.n)], pa.int64())
        base = table.select(keep).take(take)
        columns: dict[str, Any] = {
            ID: pa.array([f"{r[ID]}/r{k}" for r in rows for k in range(self.n)], pa.string()),
            PARENT_ID: pa.array([str(r[ID]) for r in rows for _ in range(self.n)], pa.string()),
        }
        for name in keep:
            columns[name] = base[name]
        for name, kind in OUTPUT_TYPES.items():
            columns[name] = pa.array([e[name] for e in episodes], kind)
        return pa.table(columns)


class _Episode:
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
        self.offered = env.tool_schemas()
        self.log: list[dict[str, Any]] = []
        self.finish, self.turns, self.error = "turn_limit", 0, None
        self.calls_this_turn = 0  # model calls since the last user message
        self.over = False
        self._params: dict[str, Any] = {}
        self._tools: list[dict[str, Any]] = []

    def next_request(self) -> ChatRequest:
        stage, env = self.stage, self.env
        tools = env.tool_schemas()
        self.offered += [t for t in tools if t not in self.offered]
        params = stage.params(self.task_id)
        forced = stage.forced_choice(self.calls_this_turn, tools)
        if forced == "none":
            # an answer, not a call: the request offers no tools (providers and local
            # models differ in how they honour tool_choice "none"; without tools, all answer)
            tools = []
        elif forced is not None:
            params["tool_choice"] = forced
        self.calls_this_turn += 1
        self._params, self._tools = params, tools
        return ChatRequest(
            model=stage.model,
            messages=request_messages(self.messages),
            params=params,
            tools=tuple(tools),
            sample_index=self.k,
        )

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
        }
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
            self.finish, entry["truncated"], self.over = "length", True, True
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
            self.finish, self.over = ("failed_turn" if failed else "answer"), True
            return
        messages.append(message("user", follow_up))
        self.calls_this_turn = 0

    def result(self) -> dict[str, Any]:
        env = self.env
        score = env.score()
        episode = {
            "environment": self.stage.environment,
            "calls": self.log,
            "checks": score.checks,
            "final_state": env.final_state(),
            "error": self.error,
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
