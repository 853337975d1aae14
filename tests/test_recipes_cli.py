"""Recipes build pipelines or say exactly what is wrong; the CLI runs, lists and shows runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from assay.curate.errors import AssayError, RecipeError
from assay.curate.recipes import load_job, load_recipe, parse_recipe
from assay.operators.text import MinLength, Normalize

RECIPE = """
name: tiny
source: rows.jsonl
batch_size: 2
stages:
  - Normalize: {column: text, lowercase: true}
  - MinLength: {column: text, chars: 5}
  - ExactDedupe
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "assay.curate.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write(tmp_path: Path) -> Path:
    rows = ["Hello  there", "hello there", "tiny", "General Kenobi", None]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_recipe_builds_the_named_stages_with_parameters(tmp_path: Path) -> None:
    pipeline = load_recipe(_write(tmp_path))
    assert pipeline.name == "tiny" and pipeline.batch_size == 2
    assert isinstance(pipeline.stages[0], Normalize) and pipeline.stages[0].lowercase
    assert isinstance(pipeline.stages[1], MinLength) and pipeline.stages[1].chars == 5
    assert type(pipeline.stages[2]).__name__ == "ExactDedupe"
    assert pipeline.source == str(tmp_path / "rows.jsonl")  # resolved next to the recipe


def test_unknown_stage_lists_the_registered_ones() -> None:
    with pytest.raises(RecipeError, match=r"stage 1: unknown stage 'MinLen'.*MinLength"):
        parse_recipe("stages: [Normalize, MinLen]")


def test_unknown_parameter_names_it_and_lists_the_valid_ones() -> None:
    with pytest.raises(
        RecipeError,
        match=r"stage 0 \(MinLength\): unknown parameter 'char'; "
        r"valid parameters: column, chars",
    ):
        parse_recipe("stages: [{MinLength: {char: 3}}]")
    with pytest.raises(RecipeError, match=r"parameter 'chars': Input should be a valid integer"):
        parse_recipe("stages: [{MinLength: {chars: many}}]")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("stages:\n  - Normalize: {column: text\n  - MinLength\n")
    with pytest.raises(RecipeError, match=r"broken\.yaml: malformed YAML at line \d+"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="unknown key 'stage'"):
        parse_recipe("stage: [Normalize]")


def test_cli_run_writes_parquet_and_show_prints_the_funnel(tmp_path: Path) -> None:
    recipe = _write(tmp_path)
    done = _cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / ".assay" / "runs").iterdir()
    out = pq.read_table(run_dir / "output")
    assert out["text"].to_pylist() == ["hello there", "general kenobi"]
    assert (run_dir / "report.md").exists() and str(run_dir / "report.md") in done.stdout

    shown = _cli("show", run_dir.name, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for expected in (
        "Normalize",
        "MinLength",
        "ExactDedupe",
        "shorter than 5 chars",
        "exact duplicate of ...",
    ):
        assert expected in shown.stdout
    listed = _cli("runs", cwd=tmp_path)
    assert run_dir.name in listed.stdout and "done" in listed.stdout
    stages = _cli("stages", cwd=tmp_path)
    assert "MinLength" in stages.stdout and "Rejects:" in stages.stdout


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("stages: [Nope]")
    done = _cli("run", "r.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown stage 'Nope'" in done.stderr and "Traceback" not in done.stderr
    done = _cli("show", "missing-run", cwd=tmp_path)
    assert done.returncode == 2 and "no run 'missing-run'" in done.stderr


def test_a_bad_row_is_named_and_the_run_resumes_once_the_file_is_fixed(tmp_path: Path):
    recipe = _write(tmp_path)
    good = [json.dumps({"text": f"line number {i}"}).encode() for i in range(9)]
    bad = list(good)
    bad[6] = b'{"text": "broken \xff row"}'
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(bad) + b"\n")
    done = _cli("run", str(recipe), "--quiet", cwd=tmp_path)
    assert done.returncode == 2
    assert "rows.jsonl: row 6 (line 7) is not valid UTF-8" in done.stderr
    (run_dir,) = (tmp_path / ".assay" / "runs").iterdir()

    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(good) + b"\n")
    resumed = _cli("run", "--resume", run_dir.name, "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = pq.read_table(run_dir / "output")
    assert out["text"].to_pylist() == [f"line number {i}" for i in range(9)]


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_recipe_loads_with_its_source(recipe: Path) -> None:
    # a misspelt option or a moved data file fails here, not after a model has loaded
    if load_job(recipe) is not None:  # a job recipe (intern.yaml): its own loader checked it
        return
    if recipe.name == "judge_grounding.yaml":  # needs a judge trained first, and says so
        with pytest.raises(AssayError, match="make one with `assay judge train`"):
            load_recipe(recipe)
        return
    pipeline = load_recipe(recipe)
    assert pipeline.stages
    if isinstance(pipeline.source, str) and not pipeline.source.startswith(("gsm8k", "halueval")):
        assert Path(pipeline.source).exists(), pipeline.source
