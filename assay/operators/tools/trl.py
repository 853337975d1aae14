"""The same environments for TRL's GRPO trainer (`GRPOTrainer(environment_factory=...)`).

TRL's contract (trl 1.16): the factory returns an object whose public methods are the tools
(their schemas built by `transformers.utils.get_json_schema` from type hints and Google
docstrings), `reset(**row)` starts an episode and returns text appended to the prompt, and an
optional `get_reward()` returns the episode's reward. `as_trl_environment(SqlEnvironment)`
builds such a class around an assay environment: only the `@tool` methods are public, each
forwarding to `step`, so TRL sees the same tools (same schemas) that ToolRollouts offers and
the reward is the environment's own score.

    from trl import GRPOTrainer
    SqlTools = as_trl_environment(SqlEnvironment, database="shop.duckdb")
    trainer = GRPOTrainer(model=..., train_dataset=tasks, environment_factory=SqlTools, ...)

BfclEnvironment's tools depend on the task (its API classes), and TRL reads tools once per
factory, from the class: `bfcl_trl_dataset(task_ids)` builds TRL's dict `environment_factory`
(one class per combination of API classes, picked by each example's `environment` field)
and one example per turn (TRL's loop plays a single user turn; see the section below).

    factories, rows = bfcl_trl_dataset(["multi_turn_base_0", "multi_turn_base_1"])
    trainer = GRPOTrainer(..., train_dataset=Dataset.from_list(rows),
                          environment_factory=factories)
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from assay.operators.tools.environment import ToolEnvironment


def _tool_functions(env_cls: type[ToolEnvironment]) -> dict[str, Callable[..., Any]]:
    return {
        name: fn
        for name, fn in inspect.getmembers(env_cls, predicate=inspect.isfunction)
        if getattr(fn, "__assay_tool__", False)
    }


def _forwarder(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> str:
        arguments = signature.bind(self, *args, **kwargs).arguments
        arguments.pop("self", None)
        return self._env.step({"function": {"name": name, "arguments": arguments}}).content

    # resolved hints: get_json_schema resolves string annotations in this module otherwise
    method.__annotations__ = typing.get_type_hints(fn)
    return method


def as_trl_environment(env_cls: type[ToolEnvironment], **kwargs: Any) -> type:
    """A class for TRL's `environment_factory` around `env_cls(**kwargs)`: the tools an
    instance offers (an option may leave one out, e.g. SqlEnvironment's `final_answer`)."""
    offered = env_cls(**kwargs).tools()
    tools = {name: fn for name, fn in _tool_functions(env_cls).items() if name in offered}
    if not tools:
        raise TypeError(
            f"{env_cls.__name__} has no @tool methods: TRL needs the tools on the class "
            "(environments whose tools depend on the task cannot be used)"
        )

    def __init__(self: Any) -> None:
        self._env = env_cls(**kwargs)

    def reset(self: Any, **row: Any) -> str:
        """Start an episode for a dataset row; the text is appended to the prompt."""
        return self._env.reset(row)

    def get_reward(self: Any) -> float:
        """The environment's score of the episode played since reset."""
        return float(self._env.score().reward)

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "reset": reset,
        "get_reward": get_reward,
        "__doc__": f"{env_cls.__name__} for TRL's environment_factory (tools: "
        f"{', '.join(sorted(tools))}).",
        "__module__": env_cls.__module__,
    }
    for name, fn in tools.items():
        namespace[name] = _forwarder(name, fn)
    return type(f"Trl{env_cls.__name__}", (), namespace)


# --- BFCL ------------------------------------------------------------------------------------
#
# TRL 1.16 also takes a dict `environment_factory` ({name: factory}; each example's
# `environment` field picks one), and reads each factory's tools once, from its class. BFCL's
# tools depend only on the task's API classes, so one class per combination of API classes
# serves every task of that combination. TRL's loop plays ONE user turn (prompt, then tool
# calls until the model answers), so a multi-turn BFCL task becomes one example per turn:
# the prompt holds the earlier turns played with BFCL's ground truth (calls and results),
# `reset` replays those calls on fresh API instances, and the reward is BFCL's multi-turn
# checker on turns 0..k (the ground truth's earlier turns and the model's turn k).

_BFCL_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "dict": dict,
    "object": dict,
    "tuple": tuple,
    "any": Any,
}


def _bfcl_hint(spec: dict[str, Any]) -> Any:
    kind = spec.get("type", "any")
    if kind == "array":
        items = spec.get("items") or {}
        return list[_bfcl_hint(items)] if items else list  # type: ignore[misc]
    if spec.get("enum"):
        return typing.Literal[tuple(spec["enum"])]  # type: ignore[valid-type]
    return _BFCL_TYPES.get(kind, Any)


def _one_line(text: str, fallback: str) -> str:
    return " ".join(str(text or "").split()) or fallback


def _bfcl_method(doc: dict[str, Any]) -> Callable[..., Any]:
    """A method whose signature, type hints and Google docstring say what BFCL's function
    doc says (what `get_json_schema` reads); calling it runs the call in the episode."""
    name = doc["name"]
    properties = doc.get("parameters", {}).get("properties", {})
    required = set(doc.get("parameters", {}).get("required", []))
    hints = {p: _bfcl_hint(spec) for p, spec in properties.items()}
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    ordered = [p for p in properties if p in required] + [
        p for p in properties if p not in required
    ]
    for p in ordered:
        default = inspect.Parameter.empty if p in required else None
        params.append(
            inspect.Parameter(
                p, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[p]
            )
        )
    args = "\n".join(
        f"    {p}: {_one_line(properties[p].get('description', ''), p)}" for p in ordered
    )
    doc_text = _one_line(doc.get("description", ""), name)
    # "Args:" / "Returns:" inside a description would end the section early
    doc_text = doc_text.replace("Args:", "Args -").replace("Returns:", "Returns -")

    def method(self: Any, **arguments: Any) -> str:
        call = {"function": {"name": name, "arguments": arguments}}
        return self._env.step(call).content

    method.__name__ = method.__qualname__ = name
    method.__doc__ = doc_text + (f"\n\nArgs:\n{args}\n" if args else "")
    method.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    method.__annotations__ = dict(hints)
    return method


def bfcl_environment_name(classes: list[str] | tuple[str, ...]) -> str:
    """The `environment` name of a combination of BFCL API classes (`bfcl:A+B`)."""
    return "bfcl:" + "+".join(classes)


def bfcl_trl_environment(classes: list[str] | tuple[str, ...]) -> type:
    """A class for TRL's `environment_factory` serving BFCL tasks on `classes`: the public
    methods are those classes' BFCL functions, `reset(**row)` (a row of `bfcl_trl_dataset`)
    replays the ground truth of the turns before the row's `turn`, and `get_reward()` is 1.0
    when BFCL's multi-turn checker passes turns 0..turn, else 0.0."""
    from assay.datasets import bfcl
    from assay.operators.tools.bfcl_env import BfclEnvironment

    classes = tuple(classes)
    docs = [d for c in classes for d in bfcl.function_docs(c)]
    names = [d["name"] for d in docs]
    clash = {n for n in names if names.count(n) > 1 or n in ("reset", "get_reward")}
    if clash or any(n.startswith("_") for n in names):
        raise ValueError(
            f"BFCL classes {classes} have tool names TRL cannot serve: {sorted(clash)}"
        )

    def __init__(self: Any) -> None:
        self._env = BfclEnvironment()
        self._turn = 0

    def reset(self: Any, **row: Any) -> None:
        """Replay the ground truth of the turns before `row["turn"]`; the prompt already
        holds the turn's user message, so nothing is appended."""
        task_id = str(row.get("bfcl_id") or row.get("id"))
        self._turn = int(row.get("turn") or 0)
        replay_ground_truth(self._env, task_id, self._turn)
        if tuple(self._env.task["classes"]) != classes:
            raise ValueError(f"task {task_id} uses {self._env.task['classes']}, not {classes}")
        return None

    def get_reward(self: Any) -> float:
        """1.0 when BFCL's checker passes every turn up to this one, else 0.0."""
        return float(bool(self._env._check(self._turn + 1)["valid"]))

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "reset": reset,
        "get_reward": get_reward,
        "__doc__": f"BFCL {'+'.join(classes)} for TRL's environment_factory.",
        "__module__": __name__,
    }
    for doc in docs:
        namespace[doc["name"]] = _bfcl_method(doc)
    return type("TrlBfcl_" + "_".join(classes), (), namespace)


def replay_ground_truth(env: Any, task_id: str, turns: int) -> list[dict[str, Any]]:
    """Reset `env` (a BfclEnvironment) with the task and play its first `turns` turns with
    BFCL's ground-truth calls; return those turns as chat messages (user, then for each call
    an assistant message with the tool call and its tool result) followed by the user
    message of turn `turns`."""
    from assay.operators.tools.bfcl_calls import openai_call
    from assay.operators.tools.episode import message

    text = env.reset({"id": task_id})
    if env.task["missed"]:
        raise ValueError(
            f"{task_id}: miss_func tasks add tools in a later turn; TRL offers one fixed tool "
            "list per environment"
        )
    if not 0 <= turns < len(env.task["ground_truth"]):
        raise ValueError(f"{task_id} has {len(env.task['ground_truth'])} turns, not turn {turns}")
    messages = [message("user", text)]
    for k in range(turns):
        for i, call_text in enumerate(env.task["ground_truth"][k]):
            call = openai_call(call_text, env.docs, i)
            call["id"] = f"call_t{k}_{i}"
            (result,) = env.step_calls([call])
            messages.append(message("assistant", "", tool_calls=[call]))
            messages.append(
                message("tool", result.content, tool_call_id=call["id"], name=result.name)
            )
        messages.append(message("user", env.end_turn(None) or ""))
    return messages


def bfcl_trl_dataset(
    task_ids: list[str], turns: str = "all"
) -> tuple[dict[str, type], list[dict[str, Any]]]:
    """TRL's dict `environment_factory` and the dataset rows for BFCL multi-turn tasks.

    `turns`: "all" (one example per turn) or "first" (turn 0 only). Rows: `prompt` (chat
    messages, tool-call arguments as JSON strings, absent fields left out), `environment`
    (`bfcl:<classes>`), `bfcl_id`, `turn`. miss_func tasks are refused (their tools change
    mid-task).
    """
    from assay.operators.tools.bfcl_env import BfclEnvironment
    from assay.operators.tools.episode import request_messages

    if turns not in ("all", "first"):
        raise ValueError("turns must be 'all' or 'first'")
    env = BfclEnvironment()
    factories: dict[str, type] = {}
    rows: list[dict[str, Any]] = []
    for task_id in task_ids:
        env.reset({"id": task_id})
        classes = tuple(env.task["classes"])
        name = bfcl_environment_name(classes)
        if name not in factories:
            factories[name] = bfcl_trl_environment(classes)
        count = len(env.task["ground_truth"]) if turns == "all" else 1
        for k in range(count):
            prompt = list(request_messages(replay_ground_truth(env, task_id, k)))
            rows.append({"prompt": prompt, "environment": name, "bfcl_id": task_id, "turn": k})
    return factories, rows
