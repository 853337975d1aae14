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

Environments whose tools depend on the task (BfclEnvironment: the tools are the task's API
classes) cannot be expressed this way: TRL reads the tools once, from the class.
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
    """A class for TRL's `environment_factory` around `env_cls(**kwargs)`."""
    tools = _tool_functions(env_cls)
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
