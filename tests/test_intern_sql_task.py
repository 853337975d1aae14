"""The intern text-to-SQL task: a deterministic database, disjoint splits, gold SQL that runs."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from assay.datasets.intern_sql import (
    build_database,
    extract_sql,
    full_prompt,
    short_prompt,
    task_rows,
    write_source,
)
from assay.datasets.intern_sql.database import results_table
from assay.datasets.intern_sql.questions import EXAMPLE_INSTANCES, TRAIN_TEMPLATES


def test_database_is_deterministic_and_has_the_documented_quirks(tmp_path: Path) -> None:
    assert results_table(seed=0).equals(results_table(seed=0))
    assert not results_table(seed=0).equals(results_table(seed=1))
    con = duckdb.connect(str(build_database(tmp_path / "f1.duckdb")))
    nulls, pit_lane, accidents, codes = con.execute(
        "select count(*) - count(position), count(*) filter (grid = 0),"
        " count(*) filter (statusId = 3), count(distinct statusId) from race_results"
    ).fetchone()
    assert nulls > 0 and pit_lane > 0 and accidents > 0 and codes == 7
    # unclassified drivers have no position; classified ones are numbered 1..n per race
    bad = con.execute(
        "select count(*) from race_results where (statusId in (1, 11)) != (position is not null)"
    ).fetchone()[0]
    assert bad == 0


def test_splits_share_no_instance_and_unseen_templates_are_new() -> None:
    train, held, unseen = (task_rows(s) for s in ("train", "heldout", "unseen"))
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert {r["template"] for r in train} == {t.name for t in TRAIN_TEMPLATES}
    assert {r["template"] for r in held} == {t.name for t in TRAIN_TEMPLATES}
    assert not {r["template"] for r in unseen} & {t.name for t in TRAIN_TEMPLATES}
    examples = {f"{name}-{code}-{season}" for name, code, season in EXAMPLE_INSTANCES}
    assert not examples & {r["id"] for r in train + held}
    # a small profile still covers every template
    assert {r["template"] for r in task_rows("train", limit=10)} == {
        t.name for t in TRAIN_TEMPLATES
    }


def test_every_gold_query_runs_and_returns_one_value(tmp_path: Path) -> None:
    con = duckdb.connect(str(build_database(tmp_path / "f1.duckdb")), read_only=True)
    for split in ("train", "heldout", "unseen"):
        for row in task_rows(split):
            result = con.execute(row["gold_sql"]).fetchall()
            assert len(result) == 1 and len(result[0]) == 1, row["id"]


def test_short_prompt_is_a_fraction_of_the_full_one() -> None:
    question = "How many races did Ana Ferreira win in 2017?"
    full = " ".join(m["content"] for m in full_prompt(question))
    short = " ".join(m["content"] for m in short_prompt(question))
    assert question in full and question in short
    assert len(full.split()) >= 5 * len(short.split())
    assert "statusId" in full and "statusId" not in short


def test_extract_sql_reads_fences_and_plain_answers() -> None:
    assert extract_sql("Sure:\n```sql\nSELECT 1 AS x;\n```\nDone.") == "SELECT 1 AS x"
    assert extract_sql("SQL: select count(*)\nfrom t where a = 1; -- more") == (
        "select count(*) from t where a = 1"
    )
    assert extract_sql("I cannot answer that.") == ""
    assert extract_sql(None) == ""


def test_write_source_is_a_pipeline_source(tmp_path: Path) -> None:
    from assay.curate.pipeline import Pipeline
    from assay.operators.text import MinLength

    path = write_source(tmp_path / "train.jsonl", "train", limit=12)
    out = Pipeline([MinLength(column="question", chars=1)]).run(
        str(path), workspace=tmp_path / "ws", progress="quiet"
    )
    table = out.to_arrow()
    assert table.num_rows == 12
    assert pa.types.is_list(table["teacher_messages"].type)
