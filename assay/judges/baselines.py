"""Two trivial grounding baselines every judge report puts beside the judge.

HaluEval's hallucinated answers are usually longer than the correct ones, so a rule that
knows nothing but length does well; word overlap with the context is the other cheap signal.
A judge that does not beat both has learnt the artefact, not grounding.

Both score higher = more likely grounded:
- `length_score`: minus the number of words of the response.
- `overlap_score`: the share of the response's words (lower case, letters and digits) that
  occur in the context.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def length_score(response: str, context: str = "") -> float:
    return -float(len(words(response)))


def overlap_score(response: str, context: str) -> float:
    said = words(response)
    if not said:
        return 1.0
    known = set(words(context))
    return sum(1 for w in said if w in known) / len(said)


BASELINES = {"length": length_score, "overlap": overlap_score}
