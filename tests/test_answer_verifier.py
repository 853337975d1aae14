"""AnswerVerifier: final-answer extraction, numeric and text comparison, stage and reward forms."""

from __future__ import annotations

import pyarrow as pa
import pytest

from assay.curate.registry import get_stage
from assay.curate.stage import Outcome
from assay.datasets.arithmetic import addition_problems
from assay.judges.answer import AnswerVerifier, final_answer


def _table(answers: list, gold: list) -> pa.Table:
    return pa.table(
        {"id": [str(i) for i in range(len(answers))], "generation": answers, "answer": gold}
    )


def _correct(candidate: object, gold: object, **params: object) -> bool:
    return AnswerVerifier(**params).check(candidate, gold, {}).correct


@pytest.mark.parametrize(
    ("candidate", "gold"),
    [
        ("3 + 4 = 7", 7),
        ("The sum is 7.0", 7),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("so the answer is \\boxed{1,200}.", "1200"),
        ("$\\boxed{\\frac{3}{4}}$", "0.75"),
        ("\\boxed{\\dfrac{-1}{2}}", "-0.5"),
        ("It costs $1,234,567.50 in total", "1234567.5"),
        ("The answer is 50%.", "0.5"),
        ("The answer is 0.5", "50%"),
        ("about 12 cm", "12"),
        ("3/4 of the cake", "\\frac{3}{4}"),
        ("She needs 1 1/2 cups", "1.5"),
        ("\u22125 degrees", "-5"),
        ("1.5e3 meters", "1500"),
        ("#### 10\\,000", "10000"),
        ("Answer: 18", "Natalia ... so she earns 18 dollars.\n#### 18"),
        ("\\boxed{\\text{Paris}}", "paris"),
        ("  PARIS  ", "Paris."),
    ],
)
def test_equivalent_answers_are_correct(candidate: str, gold: object) -> None:
    assert _correct(candidate, gold)


@pytest.mark.parametrize(
    ("candidate", "gold"),
    [
        ("3 + 4 = 8", 7),
        ("#### 72", "73"),
        ("\\boxed{12} but maybe 13", "13"),  # the boxed answer wins over later numbers
        ("1,234", "1.234"),
        ("3/4", "0.7"),
        ("no idea", 7),
        ("", 7),
        (None, 7),
        ("Lyon", "Paris"),
        ("1 2/3", "1.5"),
    ],
)
def test_different_answers_are_wrong(candidate: object, gold: object) -> None:
    assert not _correct(candidate, gold)


def test_tolerance_is_configurable() -> None:
    assert not _correct("3.14", "3.14159")
    assert _correct("3.14", "3.14159", rel_tol=1e-3)
    assert _correct("0.3333333333", "1/3")


def test_final_answer_order_boxed_then_gsm8k_then_answer_is() -> None:
    assert final_answer("x #### 5 and \\boxed{\\frac{1}{{2}}}") == "\\frac{1}{{2}}"
    assert final_answer("work\n#### 1,000\n") == "1,000"
    assert final_answer("So the final answer is 42. Done") == "42"
    assert final_answer(" plain ") == "plain"


def test_normalized_and_exact_modes() -> None:
    table = _table(["Paris.", "paris", "Lyon"], ["paris", "paris", "paris"])
    normalized = AnswerVerifier(mode="normalized", drop_incorrect=False).process(table)
    assert normalized["correct"].to_pylist() == [True, True, False]
    exact = AnswerVerifier(mode="exact", drop_incorrect=False).process(table)
    assert exact["correct"].to_pylist() == [False, True, False]


def test_stage_writes_columns_and_rejects_misses_with_the_reason() -> None:
    stage = AnswerVerifier()
    out = stage.process(_table(["12", "13", None], [12, 12, 12]))
    assert isinstance(out, Outcome)
    assert out.kept["id"].to_pylist() == ["0"]
    assert out.kept["correct_score"].to_pylist() == [1.0]
    assert out.reason_array().to_pylist() == [
        "wrong answer (got 13, gold 12)",
        "no answer (gold 12)",
    ]
    kept = AnswerVerifier(drop_incorrect=False, output_column="ok").process(
        _table(["5", "6"], [5, 5])
    )
    assert kept["ok"].to_pylist() == [True, False]
    assert kept["ok_score"].to_pylist() == [1.0, 0.0]
    assert kept["ok_reason"].to_pylist()[1] == "wrong answer (got 6, gold 5)"


def test_reward_scores_trl_completions_and_skips_missing_gold() -> None:
    stage = AnswerVerifier()
    completions = [
        [{"role": "assistant", "content": "#### 7"}],
        "I think 9",
        [{"role": "assistant", "content": "\\boxed{3}"}],
    ]
    assert stage.reward(["p"] * 3, completions, answer=[7, 7, None]) == [1.0, 0.0, None]
    with pytest.raises(KeyError, match="answer"):
        stage.reward(["p"], ["7"], solution=["7"])


def test_recipes_find_it_by_name() -> None:
    assert get_stage("AnswerVerifier") is AnswerVerifier


def test_addition_problems_are_reproducible_and_verify() -> None:
    rows = addition_problems(50, seed=3)
    assert rows == addition_problems(50, seed=3)
    for row in rows:
        a, b = row["question"].removeprefix("What is ").removesuffix("?").split("+")
        assert _correct(f"{a} + {b} = {int(a) + int(b)}", row["answer"])
