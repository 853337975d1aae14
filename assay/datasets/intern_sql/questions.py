"""Questions with gold SQL, from templates with several phrasings each, and their splits.

A question instance is (template, driver or constructor, season). Splits:
- `train` and `heldout` use the training templates and share no instance;
- `unseen` uses templates that never appear in training (podiums, pit-lane starts, engine
  failures): the honest test of whether a student learned SQL or memorised templates.

Output columns of `questions(split)`: `id` ("<template>-<entity code>-<season>"), `question`,
`gold_sql`, `template`, `split`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

from assay.datasets.intern_sql.database import CONSTRUCTORS, DRIVERS, SEASONS


@dataclass(frozen=True)
class Template:
    name: str
    phrasings: tuple[str, ...]
    sql: str
    about: str = "driver"  # or "constructor"


TRAIN_TEMPLATES = (
    Template(
        "wins",
        (
            "How many races did {name} win in {season}?",
            "In {season}, how many wins did {name} have?",
            "Count {name}'s race wins in the {season} season.",
        ),
        "SELECT COUNT(*) FROM race_results WHERE driver_name = '{name}' AND season = {season} "
        "AND position = 1",
    ),
    Template(
        "poles",
        (
            "How many times did {name} start from pole position in {season}?",
            "In {season}, how many pole positions did {name} have?",
            "How often was {name} on pole in {season}?",
        ),
        "SELECT COUNT(*) FROM race_results WHERE driver_name = '{name}' AND season = {season} "
        "AND grid = 1",
    ),
    Template(
        "accidents",
        (
            "How many accidents did {name} have in {season}?",
            "In {season}, how many races did {name} retire from with an accident?",
            "Count the crashes of {name} in {season}.",
        ),
        "SELECT COUNT(*) FROM race_results WHERE driver_name = '{name}' AND season = {season} "
        "AND statusId = 3",
    ),
    Template(
        "points",
        (
            "How many points did {name} score in {season}?",
            "What was {name}'s points total in {season}?",
            "Total points for {name} in the {season} season?",
        ),
        "SELECT SUM(points) FROM race_results WHERE driver_name = '{name}' AND season = {season}",
    ),
    Template(
        "team",
        (
            "Which constructor did {name} drive for in {season}?",
            "In {season}, which team was {name} with?",
            "Name {name}'s constructor in {season}.",
        ),
        "SELECT DISTINCT constructor FROM race_results WHERE driver_name = '{name}' "
        "AND season = {season}",
    ),
)

UNSEEN_TEMPLATES = (
    Template(
        "podiums",
        (
            "How many podium finishes did {name} have in {season}?",
            "In {season}, how many times did {name} finish in the top three?",
        ),
        "SELECT COUNT(*) FROM race_results WHERE driver_name = '{name}' AND season = {season} "
        "AND position <= 3",
    ),
    Template(
        "pit_lane_starts",
        (
            "How many times did {name} start from the pit lane in {season}?",
            "In {season}, how many pit-lane starts did {name} have?",
        ),
        "SELECT COUNT(*) FROM race_results WHERE driver_name = '{name}' AND season = {season} "
        "AND grid = 0",
    ),
    Template(
        "engine_failures",
        (
            "How many engine failures did {name} have in {season}?",
            "In {season}, how many times did a {name} car retire with an engine failure?",
        ),
        "SELECT COUNT(*) FROM race_results WHERE constructor = '{name}' AND season = {season} "
        "AND statusId = 5",
        about="constructor",
    ),
)

# Instances the prompts' worked examples use: never in any split.
EXAMPLE_INSTANCES = {
    ("wins", "NOV", 2016),
    ("accidents", "ALV", 2019),
    ("poles", "LAR", 2020),
    ("points", "GAL", 2018),
    ("team", "SAT", 2022),
}
HELDOUT_SHARE = 0.3


def _instances(template: Template) -> list[tuple[str, str, int]]:
    entities = DRIVERS if template.about == "driver" else CONSTRUCTORS
    return [(name, code, s) for name, code in entities for s in SEASONS]


def _unit(*parts: Any) -> float:
    """A stable number in [0, 1) for an instance: splits do not depend on Python's hash."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def question_row(template: Template, name: str, code: str, season: int, split: str) -> dict:
    phrasing = template.phrasings[int(_unit("phrasing", template.name, code, season) * 1e9) % len(template.phrasings)]  # fmt: skip
    return {
        "id": f"{template.name}-{code}-{season}",
        "question": phrasing.format(name=name, season=season),
        "gold_sql": template.sql.format(name=name.replace("'", "''"), season=season),
        "template": template.name,
        "split": split,
    }


def questions(split: str, limit: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The questions of `split` ("train", "heldout" or "unseen"), shuffled by `seed`.

    `limit` keeps the first `limit` after a seeded shuffle that interleaves templates, so a
    small profile still covers every template.
    """
    if split not in ("train", "heldout", "unseen"):
        raise ValueError(f"unknown split {split!r}: use 'train', 'heldout' or 'unseen'")
    templates = UNSEEN_TEMPLATES if split == "unseen" else TRAIN_TEMPLATES
    per_template: list[list[dict[str, Any]]] = []
    for template in templates:
        rows = []
        for name, code, season in _instances(template):
            if (template.name, code, season) in EXAMPLE_INSTANCES:
                continue
            held = _unit("split", template.name, code, season) < HELDOUT_SHARE
            if split == "unseen" or (split == "heldout") == held:
                rows.append(question_row(template, name, code, season, split))
        random.Random(f"{seed}-{split}-{template.name}").shuffle(rows)
        per_template.append(rows)
    ordered = [row for group in zip_longest(*per_template) for row in group if row is not None]
    return ordered[:limit] if limit is not None else ordered
