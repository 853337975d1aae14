"""The intern task's database: a seeded, season-by-season racing results table.

One wide, pre-joined table, `race_results`, with the quirks real company data has: a `grid`
column where 0 means a pit-lane start, status codes whose meaning is written only in the
handbook (`statusId` 3 is an accident), two driver columns (`driver`, a three-letter code,
and `driver_name`), two constructor columns, mixed capitalisation (`Round`, `statusId`,
`Constructor_Ref`) and nulls (`position` of unclassified finishers, missing fastest laps).

    >>> path = build_database("f1.duckdb")          # the same file for the same seed
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

# Fictional names: the task must be learned from the handbook and the data, not recalled.
DRIVERS = [
    ("Ana Ferreira", "FER"), ("Marco Bellini", "BEL"), ("Jonas Lindqvist", "LIN"),
    ("Kenji Morita", "MOR"), ("Lucas Moreau", "MRE"), ("Sofia Novak", "NOV"),
    ("Tomasz Wrobel", "WRO"), ("Elena Petrova", "PET"), ("Diego Alvarez", "ALV"),
    ("Noah Fischer", "FIS"), ("Priya Raman", "RAM"), ("Owen Gallagher", "GAL"),
    ("Mia Larsen", "LAR"), ("Arjun Mehta", "MEH"), ("Chloe Dubois", "DUB"),
    ("Felix Hartmann", "HAR"), ("Isabel Costa", "COS"), ("Ravi Kapoor", "KAP"),
    ("Hana Sato", "SAT"), ("Leo Brandt", "BRA"),
]  # fmt: skip
CONSTRUCTORS = [
    ("Aurora Racing", "aurora"), ("Vektor GP", "vektor"), ("Silverline", "silverline"),
    ("Redwood Motorsport", "redwood"), ("Falcon F1", "falcon"), ("Nordic Speed", "nordic"),
    ("Tempest", "tempest"), ("Orion Works", "orion"), ("Quattro Corse", "quattro"),
    ("Blue Harbour", "blueharbour"),
]  # fmt: skip
CIRCUITS = [
    "Harbour Park", "Valle Alta", "Northfield", "Sakura Ring", "Desert Loop", "Lakeside",
    "Monte Verde", "Iron Bay", "Coastline", "Old Forest", "Capital Street", "Red Canyon",
    "Glacier Point", "Sunset Strip", "Eagle Ridge", "Marina Bay Road", "Twin Rivers",
    "Highland", "Stonebridge", "Pine Valley",
]  # fmt: skip
SEASONS = list(range(2015, 2023))
ROUNDS_PER_SEASON = 16
POINTS = [25, 18, 15, 12, 10, 8, 6, 4, 2, 1]
# statusId codes, explained only in the handbook (prompts.HANDBOOK)
STATUS = {1: "Finished", 2: "Disqualified", 3: "Accident", 4: "Collision", 5: "Engine",
          6: "Gearbox", 11: "+1 Lap"}  # fmt: skip
TABLE = "race_results"


def results_table(
    seed: int = 0, rounds: int = ROUNDS_PER_SEASON, equal_skill: bool = False
) -> pa.Table:
    """Every (season, round, driver) result as an Arrow table (deterministic in `seed`).

    `rounds` and `equal_skill` make test-suite variants: with more rounds and every driver
    equally fast, each driver has wins, poles and accidents in almost every season, so a
    wrong query cannot match the gold's count by both being 0."""
    rng = random.Random(seed)
    skill = {name: 0.0 if equal_skill else rng.gauss(0, 1) for name, _ in DRIVERS}
    rows: dict[str, list] = {k: [] for k in _COLUMNS}
    for season in SEASONS:
        seats = list(range(len(DRIVERS)))
        rng.shuffle(seats)  # two drivers per constructor, reshuffled each season
        team = {DRIVERS[d][0]: CONSTRUCTORS[i // 2] for i, d in enumerate(seats)}
        for rnd in range(1, rounds + 1):
            circuit = CIRCUITS[(rnd - 1 + season) % len(CIRCUITS)]
            pace = sorted(DRIVERS, key=lambda d: -(skill[d[0]] + rng.gauss(0, 1.2)))
            grid = {d[0]: i + 1 for i, d in enumerate(pace)}
            if rng.random() < 0.25:  # someone starts from the pit lane
                grid[rng.choice(DRIVERS)[0]] = 0
            race = sorted(DRIVERS, key=lambda d: -(skill[d[0]] + rng.gauss(0, 1.5)))
            classified = 0
            for name, code in race:
                status = _status(rng)
                finished = status in (1, 11)
                position = None
                if finished:
                    classified += 1
                    position = classified
                cons_name, cons_ref = team[name]
                values = {
                    "season": season, "Round": rnd, "race_name": f"{circuit} Grand Prix",
                    "circuit": circuit, "driver": code, "driver_name": name,
                    "constructor": cons_name, "Constructor_Ref": cons_ref, "grid": grid[name],
                    "position": position, "points": _points(position), "statusId": status,
                    "laps": 58 if status == 1 else (57 if status == 11 else rng.randint(1, 56)),
                    "fastest_lap_s": None if rng.random() < 0.1 or not finished
                    else round(78 + rng.random() * 6, 3),
                }  # fmt: skip
                for key, value in values.items():
                    rows[key].append(value)
    return pa.table(rows, schema=_SCHEMA)


def build_database(path: str | Path, seed: int = 0, **variant: Any) -> Path:
    """Write the database to `path` (replacing it) and return the path; `variant` goes to
    `results_table` (`rounds`, `equal_skill`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    table = results_table(seed, **variant)
    with duckdb.connect(str(path)) as con:
        con.register("results", table)
        con.execute(f"create table {TABLE} as select * from results")
    return path


def _status(rng: random.Random) -> int:
    r = rng.random()
    for code, cut in ((1, 0.70), (11, 0.80), (3, 0.86), (4, 0.90), (5, 0.95), (6, 0.98)):
        if r < cut:
            return code
    return 2


def _points(position: int | None) -> float:
    if position is None or position > len(POINTS):
        return 0.0
    return float(POINTS[position - 1])


_SCHEMA = pa.schema(
    [
        ("season", pa.int32()), ("Round", pa.int32()), ("race_name", pa.string()),
        ("circuit", pa.string()), ("driver", pa.string()), ("driver_name", pa.string()),
        ("constructor", pa.string()), ("Constructor_Ref", pa.string()), ("grid", pa.int32()),
        ("position", pa.int32()), ("points", pa.float64()), ("statusId", pa.int32()),
        ("laps", pa.int32()), ("fastest_lap_s", pa.float64()),
    ]
)  # fmt: skip
_COLUMNS = _SCHEMA.names
