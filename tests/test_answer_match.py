"""AnswerMatch compares answers with gold answers in each mode and rejects the misses."""

from __future__ import annotations

import pyarrow as pa

from assay.curate.stage import Outcome
from assay.datasets.arithmetic import addition_problems
from assay.judges.answer_match import AnswerMatch


def _table(answers: list, gold: list) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(answers))], "answer": answers, "gold": gold})


def test_number_mode_takes_the_last_number() -> None:
    table = _table(["3 + 4 = 7", "8", "The sum is 7.0", None, "no idea"], [7, 7, 7, 7, 7])
    out = AnswerMatch(drop_incorrect=False).process(table)
    assert out["correct"].to_pylist() == [True, False, True, False, False]


def test_misses_are_rejected_with_the_answer_and_gold() -> None:
    out = AnswerMatch().process(_table(["12", "13"], [12, 12]))
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["0"]
    assert out.reason_array().to_pylist() == ["wrong answer (got 13, gold 12)"]


def test_normalized_and_exact_modes() -> None:
    table = _table(["Paris.", "paris", "Lyon"], ["paris", "paris", "paris"])
    normalized = AnswerMatch(mode="normalized", drop_incorrect=False).process(table)
    assert normalized["correct"].to_pylist() == [True, True, False]
    exact = AnswerMatch(mode="exact", drop_incorrect=False).process(table)
    assert exact["correct"].to_pylist() == [False, True, False]


def test_addition_problems_are_reproducible_and_correct() -> None:
    rows = addition_problems(50, seed=3)
    assert rows == addition_problems(50, seed=3)
    for row in rows:
        a, b = row["question"].removeprefix("What is ").removesuffix("?").split("+")
        assert int(a) + int(b) == row["answer"]
