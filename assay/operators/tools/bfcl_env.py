"""BfclEnvironment: BFCL's multi-turn tasks on BFCL's own stateful APIs, scored by its checker.

The APIs (file system, messaging, posting, ticketing, trading, travel booking, vehicle
control, math) are BFCL's classes, run by BFCL's executor
(`multi_turn_utils.execute_multi_turn_func_call`) from the task's `initial_config`; the tools
offered are BFCL's function docs for the task's classes (converted the way BFCL's OpenAI
handler converts them; in `miss_func` tasks the held-out functions appear at their turn with
BFCL's "I have updated some more functions" message). Each user turn is one BFCL turn; the
model's tool calls of one assistant message are one BFCL step.

Scoring is BFCL's `multi_turn_checker` unchanged: it replays the model's calls and the ground
truth from the initial state and, after every turn, compares the instances' state and checks
that the ground truth's execution results appear among the model's. Per-turn checks come from
running it on each prefix of the turns (turn k passes when turns 0..k do).

Task rows: a BFCL id (`multi_turn_base_0`) is enough (the task is read from the wheel); rows
from `assay.datasets.bfcl.multi_turn_tasks` carry every field.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from assay.datasets import bfcl
from assay.operators.tools.bfcl_calls import call_name, call_string, ground_truth_miss
from assay.operators.tools.environment import (
    EpisodeScore,
    ToolEnvironment,
    ToolResult,
    parse_arguments,
    result_text,
)

_TASK_FIELDS = ("question", "initial_config", "involved_classes", "ground_truth")


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _api_error(content: str) -> bool:
    """Whether a BFCL API answered with an error (its APIs return `{"error": ...}`)."""
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(value, dict) and "error" in value


class BfclEnvironment(ToolEnvironment):
    """One BFCL multi-turn task per episode."""

    def __init__(
        self,
        first_turns: int | None = None,
        stop_at_failed_turn: bool = False,
        require_ground_truth_calls: bool | Literal["names", "arguments"] = False,
        reject_failed_calls: bool = False,
    ) -> None:
        """`first_turns`: play and score only the task's first `first_turns` user turns
        (BFCL's checker on that prefix of the ground truth), a shorter, easier task.
        `stop_at_failed_turn`: check each turn as it ends (BFCL's checker on the turns so
        far) and end the episode at the first failed turn. `correct` is the whole task's
        (false: a task fails at its first failed turn) and so is `reward` (the turns passed
        before it), unless the whole episode would have been cut later (turn limit, cut
        call, error: BFCL scores that 0); the trajectory stops there, so a failing episode
        costs one turn's model calls instead of every turn's.
        `require_ground_truth_calls`: a turn that BFCL's checker passes must also have
        called every function the ground truth calls in it (`True` or `"names"`: by name,
        as BFCL's single-turn checker asks; `"arguments"`: each ground-truth call matched
        one to one by a call of the turn with its name and arguments, compared as
        `ToolCallVerifier` compares them, a parameter the ground truth leaves out allowed
        only at its documented default). Off by default (BFCL's score); on, it closes the
        checker's loopholes of a no-op call that leaves the state equal and returns the
        same result (adding a symbol the market lacks returns the watchlist) and of
        results matched against earlier turns' calls; `"arguments"` also rejects a call
        that reaches the right state with other arguments (that symbol, by its company
        name, when the ticker was already there).
        `reject_failed_calls`: a turn that passes those checks fails when one of its calls
        failed (no such tool, arguments that are not JSON, an exception in BFCL's executor,
        or an API answer with an `error` field, such as a symbol the market lacks). BFCL
        allows such calls; a trajectory trained on should not teach them. No ground-truth
        call of BFCL's base tasks fails."""
        super().__init__()
        if first_turns is not None and first_turns < 1:
            raise ValueError("first_turns must be at least 1")
        self.first_turns = first_turns
        self.stop_at_failed_turn = stop_at_failed_turn
        if require_ground_truth_calls not in (False, True, "names", "arguments"):
            raise ValueError(
                "require_ground_truth_calls must be false, true, 'names' or 'arguments', "
                f"not {require_ground_truth_calls!r}"
            )
        self.require_ground_truth_calls = require_ground_truth_calls
        self.reject_failed_calls = reject_failed_calls
        self._failed_calls: dict[int, list[str]] = {}  # turn -> its failed calls, described
        self._turn_checks: dict[int, dict[str, Any]] = {}
        self.failed_turn: int | None = None
        bfcl.bfcl_package()
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

        self._utils = multi_turn_utils
        self.task: dict[str, Any] = {}
        self._tag = ""

    # --- episode -----------------------------------------------------------------------

    def reset(self, row: dict[str, Any]) -> str:
        super().__init__()
        self._forget_instances()
        if all(row.get(f) is not None for f in _TASK_FIELDS):
            task = dict(row)
        elif row.get("id") or row.get("task_id"):
            task = bfcl.task_by_id(str(row.get("task_id") or row["id"]))
        else:
            raise ValueError("a BFCL task row needs an id (multi_turn_base_0) or every field")
        self.task = {
            "id": str(task.get("task_id") or task["id"]),
            "questions": _json(task["question"]),
            "initial_config": _json(task["initial_config"]),
            "classes": list(task["involved_classes"]),
            "ground_truth": _json(task["ground_truth"]),
            "missed": _json(task.get("missed_function") or "{}") or {},
        }
        if self.first_turns is not None:
            keep = self.first_turns
            self.task["questions"] = self.task["questions"][:keep]
            self.task["ground_truth"] = self.task["ground_truth"][:keep]
            self.task["missed"] = {t: f for t, f in self.task["missed"].items() if int(t) < keep}
        held_out = {n for names in self.task["missed"].values() for n in names}
        self.docs = [
            d
            for c in self.task["classes"]
            for d in bfcl.function_docs(c)
            if d["name"] not in held_out
        ]
        self.turn = 0
        self.steps: list[list[list[str]]] = [[]]  # turns -> steps -> BFCL call strings
        self._turn_checks, self.failed_turn, self._failed_calls = {}, None, {}
        # BFCL keys live instances by model name + task id: a fresh tag per episode keeps
        # concurrent episodes of one task apart
        self._tag = f"assay_{uuid.uuid4().hex[:12]}"
        return self._user_message(0)

    def _user_message(self, turn: int) -> str:
        messages = self.task["questions"][turn]
        text = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
        if str(turn) in self.task["missed"]:
            names = set(self.task["missed"][str(turn)])
            for c in self.task["classes"]:
                self.docs += [d for d in bfcl.function_docs(c) if d["name"] in names]
            if not text:
                from bfcl_eval.constants.default_prompts import (
                    DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
                )

                text = DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
        return text

    def end_turn(self, answer: str | None) -> str | None:
        self.turn += 1
        if self.stop_at_failed_turn:
            result = self._turn_check(self.turn - 1)
            if not result["valid"]:
                self.failed_turn = self.turn - 1
                self.done = True
                return None
        if self.turn >= len(self.task["questions"]):
            self.done = True
            return None
        self.steps.append([])
        return self._user_message(self.turn)

    def retry_turn(self) -> str | None:
        """Rewind the failed (or unfinished) turn: its calls are dropped and the API
        instances rebuilt from the initial config by replaying the earlier turns' calls
        (BFCL's executor keeps no undo; its APIs are deterministic given the calls)."""
        k = self.failed_turn if self.failed_turn is not None else self.turn
        if k >= len(self.task.get("questions", [])):
            return None
        check = self._turn_checks.pop(k, None)
        detail = f"{check.get('error_type')}: {check.get('error_message')}" if check else ""
        for stale in [t for t in self._turn_checks if t > k]:
            del self._turn_checks[stale]
        self._failed_calls = {t: f for t, f in self._failed_calls.items() if t < k}
        self.turn, self.failed_turn, self.done = k, None, False
        self.steps = [*self.steps[:k], []]
        self._forget_instances()
        self._tag = f"assay_{uuid.uuid4().hex[:12]}"
        earlier = [c for turn in self.steps[:k] for step in turn for c in step]
        self._execute(earlier, self._tag)
        return detail

    def reference_tools(self) -> list[str] | None:
        """The functions the ground truth calls in the current turn (sorted)."""
        gold = self.task.get("ground_truth") or []
        return sorted({call_name(c) for c in gold[self.turn]}) if self.turn < len(gold) else None

    # --- tools -------------------------------------------------------------------------

    def tools(self) -> dict[str, Any]:
        return {d["name"]: d for d in self.docs}

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [bfcl.openai_tool(d) for d in self.docs]

    def step_calls(self, tool_calls: list[dict[str, Any]]) -> list[ToolResult]:
        """The tool calls of one assistant message: one BFCL step."""
        self.steps[-1].append([])
        return [self.step(c) for c in tool_calls]

    def step(self, tool_call: dict[str, Any]) -> ToolResult:
        if not self.steps[-1]:
            self.steps[-1].append([])
        function = tool_call.get("function", tool_call)
        name = str(function.get("name", ""))
        try:
            arguments = parse_arguments(function.get("arguments"))
            if name not in self.tools():
                raise ValueError(f"no tool named {name!r}")
            call = call_string(name, arguments)
        except ValueError as exc:
            return self._record_call(ToolResult(name, {}, f"Error: {exc}", True))
        self.steps[-1][-1].append(call)
        start = time.perf_counter()
        results, _ = self._execute([call], self._tag)
        content = result_text(results[0])
        failed = content.startswith("Error during execution")
        return self._record_call(
            ToolResult(name, arguments, content, failed, time.perf_counter() - start)
        )

    def _record_call(self, result: ToolResult) -> ToolResult:
        if result.error or _api_error(result.content):
            described = f"{result.name}: {result.content[:160]}"
            self._failed_calls.setdefault(self.turn, []).append(described)
        return self._record(result)

    def _execute(self, calls: list[str], tag: str) -> tuple[list[str], dict[str, Any]]:
        return self._utils.execute_multi_turn_func_call(
            func_call_list=calls,
            initial_config=self.task["initial_config"],
            involved_classes=self.task["classes"],
            model_name=tag,
            test_entry_id=self.task["id"],
            long_context="long_context" in self.task["id"],
        )

    # --- state and score -----------------------------------------------------------------

    def final_state(self) -> dict[str, Any]:
        _, instances = self._execute([], self._tag)
        return {
            name: json.loads(
                json.dumps(
                    {k: v for k, v in vars(obj).items() if not k.startswith("_")}, default=str
                )
            )
            for name, obj in instances.items()
        }

    def decoded_turns(self) -> list[list[list[str]]]:
        """The model's calls per turn and step, as BFCL's checker reads them (empty steps
        dropped, as BFCL's runner drops undecodable or empty ones)."""
        return [[s for s in turn if s] for turn in self.steps]

    def _check(self, turns: int) -> dict[str, Any]:
        from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

        tag = f"{self._tag}_check{turns}"
        try:
            return multi_turn_checker(
                self.decoded_turns()[:turns],
                self.task["ground_truth"][:turns],
                {**self.task, "involved_classes": self.task["classes"]},
                self.task["id"].rsplit("_", 1)[0],
                tag,
            )
        finally:
            self._forget_instances(tag)

    def _turn_check(self, k: int) -> dict[str, Any]:
        """BFCL's checker on turns 0..k (cached: the model's calls of ended turns are final)."""
        if k not in self._turn_checks:
            result = self._check(k + 1)
            if result["valid"] and self.require_ground_truth_calls:
                result = self._ground_truth_calls_made(k) or result
            if result["valid"] and self.reject_failed_calls and self._failed_calls.get(k):
                failed = self._failed_calls[k]
                result = {
                    "valid": False,
                    "error_type": "assay:failed_call",
                    "error_message": f"turn {k}: {len(failed)} failed call(s): {failed[0]}",
                }
            self._turn_checks[k] = result
        return self._turn_checks[k]

    def _ground_truth_calls_made(self, k: int) -> dict[str, Any] | None:
        """A failed check naming the ground truth's calls turn `k` did not make, or None."""
        turns = self.decoded_turns()
        made = [c for step in (turns[k] if k < len(turns) else []) for c in step]
        by = "arguments" if self.require_ground_truth_calls == "arguments" else "names"
        miss = ground_truth_miss(made, self.task["ground_truth"][k], self.docs, by)
        if miss is None:
            return None
        return {
            "valid": False,
            "error_type": "assay:ground_truth_call_missing",
            "error_message": f"turn {k}{miss}",
        }

    def score(self) -> EpisodeScore:
        expected = len(self.task["ground_truth"])
        decoded = self.decoded_turns()
        checks: list[dict[str, Any]] = []
        if self.failed_turn is not None:
            # stopped at its first failed turn (stop_at_failed_turn): the turns before it
            # passed, it failed, the rest count as failed, as in a whole episode's score
            for k in range(expected):
                if k < self.failed_turn:
                    checks.append({"turn": k, "passed": True, "detail": "state and results match"})
                elif k == self.failed_turn:
                    result = self._turn_checks[k]
                    detail = f"{result.get('error_type')}: {result.get('error_message')}"
                    checks.append({"turn": k, "passed": False, "detail": detail})
                else:
                    checks.append(
                        {"turn": k, "passed": False, "detail": "not played: an earlier turn failed"}
                    )
            return EpisodeScore(self.failed_turn / expected, False, checks)
        if len(decoded) < expected or not self.done:
            # BFCL fails a task whose inference stopped early ("force_terminated")
            for k in range(expected):
                checks.append(
                    {
                        "turn": k,
                        "passed": False,
                        "detail": f"episode ended after {len(decoded)} of {expected} turns",
                    }
                )
            return EpisodeScore(0.0, False, checks)
        failed = False
        for k in range(expected):
            if failed:
                checks.append({"turn": k, "passed": False, "detail": "an earlier turn failed"})
                continue
            result = self._turn_check(k)
            if result["valid"]:
                checks.append({"turn": k, "passed": True, "detail": "state and results match"})
            else:
                failed = True
                detail = f"{result.get('error_type')}: {result.get('error_message')}"
                checks.append({"turn": k, "passed": False, "detail": detail})
        passed = sum(c["passed"] for c in checks)
        return EpisodeScore(passed / expected if expected else 0.0, not failed, checks)

    def _forget_instances(self, tag: str | None = None) -> None:
        """Drop the API instances BFCL's executor keeps in its module globals."""
        tag = tag or self._tag
        if not tag:
            return
        space = vars(self._utils)
        for key in [k for k in space if isinstance(k, str) and k.startswith(tag)]:
            del space[key]

    def __del__(self) -> None:
        try:
            self._forget_instances()
            for k in range(len(self.task.get("ground_truth", [])) + 1):
                self._forget_instances(f"{self._tag}_check{k}")
        except Exception:
            pass
