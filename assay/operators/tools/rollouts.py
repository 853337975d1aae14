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
import inspect
import zlib
from typing import Any

import pyarrow as pa
from pydantic import PrivateAttr

from assay.curate.llm.stage_client import UsesLLM
from assay.curate.registry import register
from assay.curate.stage import ID, PARENT_ID, AsyncStage
from assay.operators.tools.environment import ToolEnvironment
from assay.operators.tools.episode import Episode

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


def task_seed(seed: int, task_id: str) -> int:
    """The seed of one task's episodes: `seed` mixed with the task id, so tasks whose prompts
    differ by a word (How many products / orders are there?) do not replay the same draws
    (sample k of every task would otherwise share one seed)."""
    return (seed * 1_000_003 + zlib.crc32(task_id.encode())) % 2**31


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
    `episode.calls` records the response's `finish_reason` and its `attempt`;
    `episode.dropped_attempts` holds the turn attempts `turn_retries` dropped (`at_message`,
    `finish`, the check's `detail`, their `messages`): a failed and a passing answer to the
    same conversation, preference pairs for DPO. With `retry_other_tools`, a retried turn's
    forced first call is not offered the tools the dropped attempts called first (each call
    in `episode.calls` lists those under `excluded`). With `retry_reference_tools`, it may call
    only the tools the environment's reference calls in the turn (`hinted` in the call,
    `episode.hinted_turns`: the user turns, from 0, whose kept attempt was hinted).
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
    # turn-level rejection sampling: a user turn that fails its check (an environment that
    # checks turns as they end, e.g. BfclEnvironment(stop_at_failed_turn=True)) or whose tool
    # call is cut at max_tokens is dropped and played again from the state before it, up to
    # this many times per turn (the environment must implement `retry_turn`); each retry
    # samples with a new sample index; dropped attempts are kept in `episode`
    turn_retries: int = 0
    # with turn_retries: a retried turn's first call, when forced ("required"), may call any
    # offered tool but those the turn's dropped attempts called first (OpenAI's
    # `allowed_tools` tool choice; the prompt still lists every tool), while one is left: the
    # retries search the first call's tool without replacement instead of redrawing the
    # model's favourite wrong one
    retry_other_tools: bool = False
    # with turn_retries: a retried turn's first call, when forced ("required"), may call only
    # the tools the environment's reference solution calls in that turn (`reference_tools`;
    # BFCL: the ground truth's function names, never its arguments): a hint from the answer,
    # as STaR's rationalization gives one; the arguments, later calls and the answer stay the
    # model's and the turn's check is unchanged; `episode.hinted_turns` lists the user turns
    # whose kept attempt was hinted. Where both are set, this one decides a retry's tools
    retry_reference_tools: bool = False
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
        if self.turn_retries < 0:
            raise ValueError("turn_retries must be 0 or more")
        if isinstance(self.force_tools, int) and self.force_tools < 0:
            raise ValueError("force_tools must be 0 or more, or a list of tool names")
        self._env_cls = environment_class(self.environment)
        _check_options(self.environment, self._env_cls, self.environment_kwargs)

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
        episodes = [Episode(self, row, k) for row, k in samples]
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


def _check_options(name: str, env_cls: type, options: dict[str, Any]) -> None:
    """A misspelt `environment_kwargs` key fails when the stage is built (a recipe loads),
    not at the first episode after the model has loaded."""
    params = inspect.signature(env_cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [p for p in params if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"environment {name!r} has no option {unknown[0]!r} (options: {', '.join(known)})"
        )
