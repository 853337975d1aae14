"""GRPO rewarded by the environment alone: an `environment_factory` whose environment scores
its own episode (`get_reward()`) needs no verifier.

TRL 1.16 turns each environment class with `get_reward` into a reward function that receives
the rollouts' `environments` and is logged under the class name; `grpo()` lets such a run
through, names the reward in the run's config and refuses a run with no reward at all. The
tiny random model (tests/local_tiny_model.py) writes no tool call, so each episode's score is
what its row set in `reset` (a known reward) and the logged column can be checked against
what the environments returned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from local_tiny_model import registered_tiny_model

from assay.curate.errors import AssayError
from assay.train.grpo import environment_rewards, grpo


class CountingEnv:
    """Add numbers; the episode's score is the row's `base` plus 0.1 per tool call."""

    scored: list[float] = []  # every get_reward() result, in call order

    def reset(self, **row: Any) -> None:
        self.base = float(row["base"])
        self.calls = 0
        return None

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first integer.
            b: The second integer.

        Returns:
            Their sum.
        """
        self.calls += 1
        return a + b

    def get_reward(self) -> float:
        reward = self.base + 0.1 * self.calls
        CountingEnv.scored.append(reward)
        return reward


class OtherEnv:
    """An environment of another class, with its own score."""

    def reset(self, **row: Any) -> None:
        self.base = -float(row["base"])

    def negate(self, x: int) -> int:
        """Negate an integer.

        Args:
            x: The integer.

        Returns:
            Minus x.
        """
        return -x

    def get_reward(self) -> float:
        return self.base


class SilentEnv:
    """No `get_reward`: it cannot reward a run by itself."""

    def reset(self, **row: Any) -> None:
        return None

    def echo(self, text: str) -> str:
        """Echo a text.

        Args:
            text: The text.

        Returns:
            The same text.
        """
        return text


ROWS = [
    {"id": "a", "prompt": [{"role": "user", "content": "Add 2 and 3."}], "base": 0.25},
    {"id": "b", "prompt": [{"role": "user", "content": "Add 4 and 5."}], "base": 0.75},
]


def test_environment_rewards_are_named_after_the_environment_classes() -> None:
    assert environment_rewards(CountingEnv) == ["CountingEnv"]
    # a dict factory: one reward per class (the same class twice is one), none for SilentEnv
    factories = {"x": CountingEnv, "y": OtherEnv, "z": CountingEnv, "s": SilentEnv}
    assert environment_rewards(factories) == ["CountingEnv", "OtherEnv"]
    assert environment_rewards(lambda: OtherEnv()) == ["OtherEnv"]  # a factory function
    assert environment_rewards(SilentEnv) == []
    assert environment_rewards(None) == []


def test_sql_environment_class_is_wrapped_for_trl() -> None:
    from assay.operators.tools.sql_env import SqlEnvironment
    from assay.train.grpo import trl_environment_factory

    assert environment_rewards(SqlEnvironment) == ["TrlSqlEnvironment"]
    wrapped = trl_environment_factory(SqlEnvironment)
    public = {m for m in dir(wrapped) if not m.startswith("_")}
    assert public == {"reset", "get_reward", "list_tables", "describe_table", "run_query"}
    # the same class under two names: one wrapper class, so one reward column
    both = trl_environment_factory({"a": SqlEnvironment, "b": SqlEnvironment})
    assert both["a"] is both["b"]
    assert environment_rewards({"a": SqlEnvironment, "b": SqlEnvironment}) == ["TrlSqlEnvironment"]


def test_a_run_without_any_reward_is_refused_naming_the_settings(tmp_path: Path) -> None:
    with pytest.raises(AssayError, match="no environment_factory was given") as err:
        grpo(ROWS, [], workspace=str(tmp_path / "ws"))
    assert "--verifier" in str(err.value) and "get_reward()" in str(err.value)
    with pytest.raises(AssayError, match="define no get_reward"):
        grpo(ROWS, [], environment_factory=SilentEnv, workspace=str(tmp_path / "ws"))
    with pytest.raises(AssayError, match=r"environment rewards \['CountingEnv'\]"):
        grpo(
            ROWS,
            [],
            environment_factory=CountingEnv,
            reward_weights=[1.0],
            workspace=str(tmp_path / "ws"),
        )


def _envs(cls: type, bases: list[float], calls: list[int]) -> list[Any]:
    out = []
    for base, n in zip(bases, calls, strict=True):
        env = cls()
        env.reset(base=base, prompt=[])
        if hasattr(env, "calls"):
            env.calls = n
        out.append(env)
    return out


def test_the_environment_reward_returns_the_environments_scores(tmp_path: Path) -> None:
    from assay.train.grpo import GRPOSettings, format_reward, grpo_rows, grpo_trainer

    settings = GRPOSettings(model="tiny-env", num_generations=2, batch_size=4, max_steps=1)
    rows = [{**r, "environment": "count" if k == 0 else "other"} for k, r in enumerate(ROWS)]
    with registered_tiny_model(tmp_path, "tiny-env"):
        trainer = grpo_trainer(
            grpo_rows(rows),
            [format_reward(r"\d+", "digits")],  # alongside another reward
            {"count": CountingEnv, "other": OtherEnv},
            settings,
            tmp_path / "out",
        )
    assert trainer.reward_func_names == ["digits", "CountingEnv", "OtherEnv"]
    by_name = dict(zip(trainer.reward_func_names, trainer.reward_funcs, strict=True))
    # rollouts in given states: two CountingEnv episodes (0 and 2 tool calls), one OtherEnv
    environments = _envs(CountingEnv, [0.25, 0.5], [0, 2]) + _envs(OtherEnv, [0.75], [0])
    expected = [e.get_reward() for e in environments]
    kwargs = {"prompts": ["p"] * 3, "completions": ["c"] * 3, "environments": environments}
    counted = by_name["CountingEnv"](**kwargs)
    assert counted[:2] == pytest.approx(expected[:2]) and counted[2] is None
    assert by_name["OtherEnv"](**kwargs) == [None, None, expected[2]]
    assert expected == pytest.approx([0.25, 0.7, -0.75])


def test_grpo_step_rewarded_by_the_environment_alone(tmp_path: Path) -> None:
    CountingEnv.scored.clear()
    with registered_tiny_model(tmp_path, "tiny-env"):
        result = grpo(
            ROWS,
            [],
            environment_factory=CountingEnv,
            model="tiny-env",
            workspace=str(tmp_path / "ws"),
            max_steps=1,
            num_generations=2,
            batch_size=4,
            max_completion_length=8,
            patience=10,
        )
    step = next(h for h in result.log_history if "rewards/CountingEnv/mean" in h)
    # one rollout per completion: 2 prompts x 2 generations, each scored once
    assert len(CountingEnv.scored) == 4
    mean = sum(CountingEnv.scored) / len(CountingEnv.scored)
    assert step["rewards/CountingEnv/mean"] == pytest.approx(mean)
    assert step["reward"] == pytest.approx(mean)  # the only reward, weight 1
    assert not [k for k in step if k.startswith("rewards/") and "CountingEnv" not in k]

    from assay.curate.store import RunStore
    from assay.train.store import metrics, training_run

    with RunStore(str(tmp_path / "ws")) as store:
        config = training_run(store, result.run_id)["config"]
        stored = metrics(store, result.run_id, "rewards/CountingEnv/mean")
    config = json.loads(config) if isinstance(config, str) else config
    assert config["rewards"] == ["CountingEnv"]
    assert [v for _, v in stored] == pytest.approx([mean])
