"""Evaluation tasks: a task is rows + prompt builders (full / short) + a verifier.

- A generation task (`GenerationTask`) has `rows(split)` (split "train" or "test", disjoint),
  `prompt(row, style)` -> chat messages for `style` "full" (instructions, examples: the long
  context) or "short" (the question alone), a `verifier` (assay `Verifier`: the same object
  filters data and rewards GRPO), and `target(row)`, the gold completion text for SFT.
- A multiple-choice task (`ChoiceTask`) has `rows()` with `question`, `choices`, `gold`; it is
  scored by the log-likelihood of each choice (the general-skills regression set).

Other tasks plug in with `register_task(name, factory)` (GSM8K, text-to-SQL, ...).

Example: `get_task("arithmetic").prompt({"question": "What is 2+3?"}, "short")` ->
`[{"role": "user", "content": "What is 2+3?"}]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assay.judges.base import Verdict, Verifier

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class LastNumberVerifier(Verifier):
    """Correct when the last number in the candidate equals the gold number.

    Input columns: `column` (string), `gold_column` (number). Output: `correct`, ...
    Example: candidate "3 + 4 = 7", gold 7 -> correct; "8" -> wrong answer (got 8, gold 7).
    """

    column: str = "generation"
    gold_column: str = "answer"

    def check(self, candidate: Any, gold: Any, row: dict[str, Any]) -> Verdict:
        numbers = _NUMBER.findall(str(candidate or ""))
        got = numbers[-1] if numbers else None
        try:
            same = got is not None and float(got) == float(gold)
        except (TypeError, ValueError):
            same = False
        return Verdict(same, 1.0 if same else 0.0, f"wrong answer (got {got}, gold {gold})")


@dataclass
class GenerationTask:
    name: str
    rows: Callable[[str], list[dict[str, Any]]]
    prompt: Callable[[dict[str, Any], str], list[dict[str, str]]]
    verifier: Verifier
    target: Callable[[dict[str, Any]], str]
    max_new_tokens: int = 32
    gold_column: str = "answer"


@dataclass
class ChoiceTask:
    name: str
    rows: Callable[[], list[dict[str, Any]]]
    context: Callable[[dict[str, Any]], str]
    continuations: Callable[[dict[str, Any]], list[str]]


ARITHMETIC_SYSTEM = (
    "You are a calculator. Add the two numbers and reply with only the result as digits, "
    "with no words."
)
ARITHMETIC_SHOTS = [("What is 3+4?", "7"), ("What is 12+9?", "21"), ("What is 0+15?", "15")]


def arithmetic_prompt(row: dict[str, Any], style: str) -> list[dict[str, str]]:
    if style == "short":
        return [{"role": "user", "content": row["question"]}]
    if style != "full":
        raise ValueError(f"prompt style must be 'full' or 'short', got {style!r}")
    messages = [{"role": "system", "content": ARITHMETIC_SYSTEM}]
    for question, answer in ARITHMETIC_SHOTS:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    return [*messages, {"role": "user", "content": row["question"]}]


def arithmetic_rows(split: str, n: int | None = None) -> list[dict[str, Any]]:
    """ "test": 200 held-out problems (seed 1234); "train": problems not among them."""
    from assay.datasets.arithmetic import addition_problems

    test = addition_problems(200, seed=1234)
    if split == "test":
        return test[:n] if n else test
    held = {r["question"] for r in test}
    train = [r for r in addition_problems(2000, seed=0) if r["question"] not in held]
    return train[:n] if n else train


def arithmetic_task() -> GenerationTask:
    return GenerationTask(
        name="arithmetic",
        rows=arithmetic_rows,
        prompt=arithmetic_prompt,
        verifier=LastNumberVerifier(),
        target=lambda row: str(row["answer"]),
        max_new_tokens=12,
    )


def _rc_context(row: dict[str, Any]) -> str:
    return f"Question: {row['question']}\nAnswer:"


def _rc_continuations(row: dict[str, Any]) -> list[str]:
    return [" " + c for c in row["choices"]]


def mmlu_task() -> ChoiceTask:
    from assay.datasets.mmlu import mmlu_questions

    return ChoiceTask("mmlu", mmlu_questions, _rc_context, _rc_continuations)


def arc_task(level: str) -> Callable[[], ChoiceTask]:
    def make() -> ChoiceTask:
        from assay.datasets.arc import arc_questions

        return ChoiceTask(
            f"arc-{level}", lambda: arc_questions(level), _rc_context, _rc_continuations
        )

    return make


TASKS: dict[str, Callable[[], GenerationTask | ChoiceTask]] = {
    "arithmetic": arithmetic_task,
    "mmlu": mmlu_task,
    "arc-easy": arc_task("easy"),
    "arc-challenge": arc_task("challenge"),
}
GENERAL_SET = ["mmlu", "arc-easy", "arc-challenge"]


def register_task(name: str, factory: Callable[[], GenerationTask | ChoiceTask]) -> None:
    TASKS[name] = factory


def get_task(name: str) -> GenerationTask | ChoiceTask:
    if name not in TASKS:
        raise KeyError(f"no task {name!r}; known: {', '.join(sorted(TASKS))} (or 'general')")
    return TASKS[name]()


def task_rows(task_name: str, kind: str, n: int, style: str = "short") -> list[dict[str, Any]]:
    """Training rows from a generation task's train split.

    `kind` "sft": `prompt` (messages in `style`) + `completion` (the gold target, verified by
    construction) + `teacher_prompt` (the full-style prompt, for context distillation);
    "grpo": `prompt` + the gold column for the verifier's reward.
    """
    task = get_task(task_name)
    if not isinstance(task, GenerationTask):
        raise ValueError(f"{task_name} is a multiple-choice task; it has no training rows")
    rows = task.rows("train")[:n]
    out = []
    for row in rows:
        item: dict[str, Any] = {"id": row["id"], "prompt": task.prompt(row, style)}
        if kind == "sft":
            item["completion"] = task.target(row)
            item["teacher_prompt"] = task.prompt(row, "full")
        else:
            item[task.gold_column] = row[task.gold_column]
        out.append(item)
    return out
