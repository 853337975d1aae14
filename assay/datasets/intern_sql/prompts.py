"""What the teacher and the student see: the intern's handbook, the schema, worked examples.

- `full_prompt(question)`: the teacher's long prompt (handbook, commented schema, two worked
  examples, the question): everything an intern needs on day one.
- `short_prompt(question)`: the student's prompt (the table name and the question): what is
  left once the knowledge has moved from the prompt into the weights.
- `extract_sql(text)`: the query in a model's answer (a ```sql fence, or the text from the
  first SELECT / WITH to the first semicolon).
"""

from __future__ import annotations

import re

from assay.datasets.intern_sql.database import TABLE

HANDBOOK = """\
Intern's handbook: the race_results table
- One row per driver per race. A season has 16 rounds (column Round).
- driver_name is the full name ("Ana Ferreira"); driver is a three-letter code. Filter people
  by driver_name.
- constructor is the team's name ("Aurora Racing"); Constructor_Ref is its short id.
- grid is the starting position: grid = 1 is pole position; grid = 0 is a pit-lane start.
- position is the finishing position (1 = a win, 1-3 = a podium); it is NULL when the driver
  was not classified.
- statusId says how the race ended: 1 Finished, 11 finished one lap down (+1 Lap),
  2 Disqualified, 3 Accident, 4 Collision, 5 Engine failure, 6 Gearbox failure.
- points are the points scored in that race; a season total is SUM(points).
"""

SCHEMA = f"""\
CREATE TABLE {TABLE} (
  season INTEGER,          -- year
  Round INTEGER,           -- 1..16 within the season
  race_name VARCHAR,
  circuit VARCHAR,
  driver VARCHAR,          -- three-letter code
  driver_name VARCHAR,     -- full name: filter people by this
  constructor VARCHAR,     -- team name
  Constructor_Ref VARCHAR, -- team short id
  grid INTEGER,            -- starting position; 1 = pole, 0 = pit lane
  position INTEGER,        -- finishing position; NULL if not classified
  points DOUBLE,
  statusId INTEGER,        -- 1 Finished, 11 +1 Lap, 2 DSQ, 3 Accident, 4 Collision, 5 Engine, 6 Gearbox
  laps INTEGER,
  fastest_lap_s DOUBLE     -- NULL when not recorded
);"""

EXAMPLES = (
    (
        "How many races did Sofia Novak win in 2016?",
        "SELECT COUNT(*) FROM race_results WHERE driver_name = 'Sofia Novak' AND season = 2016 "
        "AND position = 1;",
    ),
    (
        "How many accidents did Diego Alvarez have in 2019?",
        "SELECT COUNT(*) FROM race_results WHERE driver_name = 'Diego Alvarez' AND season = 2019 "
        "AND statusId = 3;",
    ),
    (
        "How many times did Mia Larsen start from pole position in 2020?",
        "SELECT COUNT(*) FROM race_results WHERE driver_name = 'Mia Larsen' AND season = 2020 "
        "AND grid = 1;",
    ),
    (
        "How many points did Owen Gallagher score in 2018?",
        "SELECT SUM(points) FROM race_results WHERE driver_name = 'Owen Gallagher' "
        "AND season = 2018;",
    ),
    (
        "Which constructor did Hana Sato drive for in 2022?",
        "SELECT DISTINCT constructor FROM race_results WHERE driver_name = 'Hana Sato' "
        "AND season = 2022;",
    ),
)

SYSTEM = "You write one DuckDB SQL query that answers the question. Reply with the SQL only."


def full_prompt(question: str) -> list[dict[str, str]]:
    """The teacher's chat messages: the handbook and schema as the system turn, the worked
    examples as earlier user / assistant turns (a small chat model follows turns far better
    than examples inlined in one message), then the question."""
    messages = [{"role": "system", "content": f"{SYSTEM}\n\n{HANDBOOK}\n{SCHEMA}"}]
    for q, sql in EXAMPLES:
        messages += [
            {"role": "user", "content": f"Question: {q}\nSQL:"},
            {"role": "assistant", "content": sql},
        ]
    return [*messages, {"role": "user", "content": f"Question: {question}\nSQL:"}]


def short_prompt(question: str) -> list[dict[str, str]]:
    """The student's chat messages: the table name and the question, nothing else."""
    return [{"role": "user", "content": f"Table: {TABLE}\nQuestion: {question}\nSQL:"}]


_FENCE = re.compile(r"```(?:sql)?\s*(.*?)(?:```|$)", re.S | re.I)
_START = re.compile(r"\b(SELECT|WITH)\b", re.I)


def extract_sql(text: str | None) -> str:
    """The SQL in an answer: a fenced block if there is one, else SELECT/WITH up to `;`."""
    if not text:
        return ""
    fenced = _FENCE.search(text)
    if fenced and _START.search(fenced.group(1)):
        text = fenced.group(1)
    start = _START.search(text)
    if start is None:
        return ""
    query = text[start.start() :].split(";", 1)[0]
    return " ".join(query.split())
