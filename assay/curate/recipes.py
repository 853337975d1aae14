"""Recipes: a YAML file that names registered stages and their parameters.

    name: clean-text
    source: example.jsonl          # relative to the recipe file
    batch_size: 1000               # optional
    search_index: false            # optional: no viewer search index at the end of the run
    stages:
      - Normalize: {column: text}
      - MinLength: {column: text, chars: 20}
      - ExactDedupe                 # a bare name takes every default

`load_recipe(path)` returns a `Pipeline`; every mistake raises a `RecipeError` that names the
file, the stage (position and name) and the parameter, and lists the valid choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from assay.curate.errors import RecipeError
from assay.curate.executors.local import DEFAULT_BATCH_SIZE
from assay.curate.pipeline import Pipeline
from assay.curate.registry import get_stage, stages
from assay.curate.stage import Stage

TOP_LEVEL_KEYS = ("name", "description", "source", "batch_size", "search_index", "stages")


JOB_KEYS = (
    "name", "description", "job", "profile", "teacher", "student", "judge", "overrides",
    "search_index",
)  # fmt: skip


def load_job(path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """For a job recipe (a `job:` key), the job's module name and its config; else None.

    A job chains a curation run, training and evaluation (`assay/jobs/<job>.py`, resolved by
    name so the engine imports none of them).
    """
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load_recipe reports these with the line and column
    if not isinstance(spec, dict) or "job" not in spec:
        return None
    unknown = sorted(set(spec) - set(JOB_KEYS))
    if unknown:
        raise RecipeError(
            f"{path}: unknown key {unknown[0]!r}; a job recipe takes {', '.join(JOB_KEYS)}"
        )
    if not isinstance(spec["job"], str) or not spec["job"].isidentifier():
        raise RecipeError(f"{path}: 'job' must name a job module, got {spec['job']!r}")
    if not isinstance(spec.get("search_index", True), bool):
        raise RecipeError(
            f"{path}: search_index must be true or false, got {spec['search_index']!r}"
        )
    return f"assay.jobs.{spec['job']}", spec


def load_recipe(path: str | Path) -> Pipeline:
    """Read a recipe file and build its pipeline (source resolved next to the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {str(path)!r} is not valid UTF-8: {exc}") from exc
    return parse_recipe(text, origin=str(path), base_dir=path.parent)


def parse_recipe(text: str, origin: str = "<recipe>", base_dir: Path | None = None) -> Pipeline:
    """Build a pipeline from recipe text; `base_dir` anchors a relative source path."""
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{origin}: malformed YAML{where}: {problem}") from exc
    if not isinstance(spec, dict):
        raise RecipeError(f"{origin}: a recipe is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    unknown = sorted(set(spec) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise RecipeError(
            f"{origin}: unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}"
        )
    entries = spec.get("stages")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{origin}: 'stages' must be a non-empty list of stages")
    built = [_build_stage(entry, i, origin) for i, entry in enumerate(entries)]
    source = spec.get("source")
    if isinstance(source, str) and base_dir is not None and not Path(source).is_absolute():
        source = str((base_dir / source).resolve())
    batch_size = spec.get("batch_size", DEFAULT_BATCH_SIZE)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RecipeError(f"{origin}: batch_size must be a positive integer, got {batch_size!r}")
    search_index = spec.get("search_index", True)
    if not isinstance(search_index, bool):
        raise RecipeError(f"{origin}: search_index must be true or false, got {search_index!r}")
    return Pipeline(
        built,
        source=source,
        name=str(spec.get("name") or Path(origin).stem),
        batch_size=batch_size,
        recipe=text,
        search_index=search_index,
    )


def _build_stage(entry: Any, index: int, origin: str) -> Stage:
    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params = params if params is not None else {}
    else:
        raise RecipeError(
            f"{origin}: stage {index} must be a stage name or a one-key mapping "
            f"'StageName: {{param: value}}', got {entry!r}"
        )
    try:
        cls = get_stage(name)
    except KeyError:
        raise RecipeError(
            f"{origin}: stage {index}: unknown stage {name!r}; registered stages: "
            f"{', '.join(stages())}"
        ) from None
    if not isinstance(params, dict):
        raise RecipeError(f"{origin}: stage {index} ({name}): parameters must be a mapping")
    valid = ", ".join(cls.model_fields) or "none"
    try:
        return cls(**params)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            param = ".".join(str(p) for p in err["loc"]) or "?"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown parameter {param!r}")
            else:
                problems.append(f"parameter {param!r}: {err['msg']}")
        raise RecipeError(
            f"{origin}: stage {index} ({name}): {'; '.join(problems)}; valid parameters: {valid}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{origin}: stage {index} ({name}): {exc}") from exc
