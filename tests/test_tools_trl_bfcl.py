"""BFCL through TRL's dict `environment_factory`: one class per combination of API classes
whose public methods are BFCL's functions (schemas as get_json_schema builds them, equal in
names, types and required arguments to what ToolRollouts offers), one example per turn with
the earlier turns played by the ground truth; the reward is BFCL's checker on the prefix."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from transformers.utils import get_json_schema

from assay.operators.tools.bfcl_calls import openai_call
from assay.operators.tools.bfcl_env import BfclEnvironment
from assay.operators.tools.trl import bfcl_trl_dataset, bfcl_trl_environment

TASK = "multi_turn_base_1"  # GorillaFileSystem, 4 turns


def public_methods(instance: Any) -> dict[str, Any]:
    """What GRPOTrainer takes as an environment's tools."""
    return {
        n: getattr(instance, n)
        for n, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
        if n not in ("reset", "get_reward") and not n.startswith("_")
    }


def play(instance: Any, row: dict[str, Any], calls: list[str]) -> float:
    """TRL's loop for one example: reset(**row minus environment), tool calls, reward."""
    instance.reset(**{k: v for k, v in row.items() if k != "environment"})
    tools = public_methods(instance)
    docs = instance._env.docs
    for i, text in enumerate(calls):
        function = openai_call(text, docs, i)["function"]
        tools[function["name"]](**json.loads(function["arguments"]))
    return instance.get_reward()


@pytest.fixture(scope="module")
def served() -> tuple[dict[str, type], list[dict[str, Any]]]:
    return bfcl_trl_dataset([TASK, "multi_turn_base_150"])


def test_one_environment_per_class_combination_with_bfcls_tools(served) -> None:
    factories, rows = served
    env = BfclEnvironment()
    env.reset({"id": TASK})
    name = "bfcl:GorillaFileSystem"
    assert name in factories and len(factories) == 2
    ours = {s["function"]["name"]: s["function"] for s in env.tool_schemas()}
    methods = public_methods(factories[name]())
    assert sorted(methods) == sorted(ours)
    for method_name, method in methods.items():
        theirs = get_json_schema(method)["function"]
        params, expected = theirs["parameters"], ours[method_name]["parameters"]
        assert set(params.get("properties", {})) == set(expected["properties"]), method_name
        assert set(params.get("required", [])) == set(expected.get("required", [])), method_name
        for p, spec in expected["properties"].items():
            assert params["properties"][p]["type"] == spec["type"], (method_name, p)
        assert theirs["description"].split()[:5] == ours[method_name]["description"].split()[:5]
    task_rows = [r for r in rows if r["bfcl_id"] == TASK]
    assert [r["turn"] for r in task_rows] == [0, 1, 2, 3]
    assert {r["environment"] for r in task_rows} == {name}


def test_each_turn_rewards_the_ground_truth_and_not_a_changed_call(served) -> None:
    factories, rows = served
    instance = factories["bfcl:GorillaFileSystem"]()
    env = BfclEnvironment()
    env.reset({"id": TASK})
    ground_truth = env.task["ground_truth"]
    for row in [r for r in rows if r["bfcl_id"] == TASK]:
        k = row["turn"]
        # the prompt: the earlier turns as played by the ground truth, then turn k's request
        assert row["prompt"][-1]["role"] == "user"
        assert sum(m["role"] == "user" for m in row["prompt"]) == k + 1
        assert sum(m["role"] == "tool" for m in row["prompt"]) == sum(map(len, ground_truth[:k]))
        assert play(instance, row, ground_truth[k]) == 1.0, k
    # turn 1's second call moved the file to the wrong folder: BFCL's state check fails
    turn_1 = next(r for r in rows if r["bfcl_id"] == TASK and r["turn"] == 1)
    assert ground_truth[1][1] == "mv(source='log.txt',destination='archive')"
    changed = [ground_truth[1][0], "mv(source='log.txt',destination='backup')"]
    assert play(instance, turn_1, changed) == 0.0
    assert play(instance, turn_1, []) == 0.0  # no call where BFCL expects some


def test_tool_results_reach_the_model_and_bad_calls_are_errors(served) -> None:
    factories, rows = served
    instance = factories["bfcl:GorillaFileSystem"]()
    instance.reset(**{k: v for k, v in rows[0].items() if k != "environment"})
    listing = instance.ls(a=True)
    assert "current_directory_content" in listing
    assert "No such file or directory" in instance.cd(folder="no_such_folder")  # BFCL's error
    # an argument the function does not take: the executor's error, not an exception
    assert instance.cd(folder="x", force=True).startswith("Error during execution")


def test_miss_func_tasks_and_unknown_turns_are_refused() -> None:
    with pytest.raises(ValueError, match="miss_func"):
        bfcl_trl_dataset(["multi_turn_miss_func_0"])
    with pytest.raises(ValueError, match="turns"):
        bfcl_trl_environment(("GorillaFileSystem",))().reset(bfcl_id=TASK, turn=9)
