"""Pipeline: a plain list of stages, a source, and a run that lands as Parquet shards.

    pipeline = Pipeline([Normalize(column="text"), MinLength(chars=20), ExactDedupe()])
    result = pipeline.run("data.jsonl")
    result.to_polars()

A run writes `<workspace>/runs/<run_id>/output/part-*.parquet` (in source order), the
removed rows under `rejects/`, and its bookkeeping in `<workspace>/assay.duckdb`. A finished
run also writes the viewer's search index of its output (`search/output.duckdb`, see
assay/curate/search_index.py), so the first page and first search in `assay view` are fast;
`search_index=False` (recipe `search_index: false`, `assay run --no-search-index`) skips it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from assay.curate.errors import AssayError
from assay.curate.executors.local import DEFAULT_BATCH_SIZE, LocalExecutor
from assay.curate.progress import Progress, make_progress
from assay.curate.sources import Source, as_source
from assay.curate.stage import Stage
from assay.curate.store import RunStore

DEFAULT_WORKSPACE = ".assay"
log = logging.getLogger(__name__)


class Pipeline:
    """An ordered list of stages, optionally bound to a source (as a recipe binds one)."""

    def __init__(
        self,
        stages: list[Stage],
        *,
        source: Any = None,
        name: str = "pipeline",
        batch_size: int = DEFAULT_BATCH_SIZE,
        recipe: str | None = None,
        search_index: bool = True,
    ) -> None:
        for i, stage in enumerate(stages):
            if not isinstance(stage, Stage):
                raise TypeError(f"stage {i} is a {type(stage).__name__}, not an assay Stage")
        self.stages = list(stages)
        self.source = source
        self.name = name
        self.batch_size = batch_size
        self.recipe = recipe
        self.search_index = search_index  # write the viewer's index at the end of a run

    def config(self, source: Source, batch_size: int | None = None) -> dict[str, Any]:
        """What the run store records, and what a resume must match."""
        return {
            "stages": [s.describe() for s in self.stages],
            "batch_size": batch_size or self.batch_size,
            "source": source.describe(),
        }

    def run(
        self,
        source: Any = None,
        *,
        workspace: str | Path = DEFAULT_WORKSPACE,
        resume: str | None = None,
        executor: LocalExecutor | None = None,
        progress: Progress | str = "auto",
        no_cache: bool = False,
        search_index: bool | None = None,
    ) -> RunResult:
        """Run the pipeline (or continue run `resume`) and return its result.

        `search_index`: write the viewer's search index of the output at the end (default:
        the pipeline's `search_index`, True); without it `assay view` builds one in memory.
        The index is built from the output tables the run keeps in memory, up to the
        executor's `hold_bytes` (`LocalExecutor(hold_bytes=0)`: none kept, all read back)."""
        if source is None and self.source is None:
            raise AssayError("no source: pass one to run() or bind one in the recipe")
        src = as_source(source if source is not None else self.source)
        executor = executor or LocalExecutor(batch_size=self.batch_size)
        reporter = make_progress(progress) if isinstance(progress, str) else progress
        # batches are cut by the executor: its batch size is what a resume must match
        config = self.config(src, batch_size=executor.batch_size)
        with RunStore(workspace) as store:
            if resume:
                run = store.run(resume)
                _check_same_config(resume, run["config"], config, self.stages)
                run_id = resume
                store.set_status(run_id, "running")
            else:
                run_id = store.new_run(self.name, self.recipe, config)
                store.record_stages(run_id, config["stages"])
            run_dir = Path(store.run(run_id)["run_dir"])
            index = self.search_index if search_index is None else search_index
            # the index is built from the output tables still in memory, not read back
            output: dict[str, pa.Table] | None = {} if index else None
            try:
                executor.run(
                    self.stages, src, store, run_id, run_dir, reporter, no_cache, keep_output=output
                )
            except KeyboardInterrupt:
                store.set_status(
                    run_id, "interrupted", f"stopped by the user; resume with --resume {run_id}"
                )
                raise
            except BaseException as exc:
                store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
                raise
            store.set_status(run_id, "done")
        if index:
            write_search_index(run_dir, output)
        return RunResult(run_id=run_id, run_dir=run_dir, workspace=Path(workspace))


def write_search_index(run_dir: Path, tables: dict[str, pa.Table] | None = None) -> Path | None:
    """The viewer's search index of a finished run's output shards (`<run_dir>/search/
    output.duckdb`); None when there is nothing to index. `tables`: output tables the run
    still holds, by shard name (used instead of reading those shards back). A failure is
    logged, never raised: the viewer then builds the index itself."""
    from assay.curate.search_index import index_path, write_index

    files = [str(f) for f in sorted((run_dir / "output").glob("*.parquet"))]
    try:
        return write_index(files, index_path(run_dir), tables=tables)
    except Exception as exc:  # the run's data is written; the index is only a speed-up
        log.warning("search index of %s not written: %s: %s", run_dir, type(exc).__name__, exc)
        return None


def _check_same_config(
    run_id: str, stored: dict[str, Any], current: dict[str, Any], stages: list[Stage]
) -> None:
    stored = {**stored, "stages": _with_new_defaults(stored.get("stages"), stages)}
    for key in ("stages", "batch_size", "source"):
        if json.dumps(stored.get(key), sort_keys=True) != json.dumps(current[key], sort_keys=True):
            raise AssayError(
                f"cannot resume run {run_id}: its {key} differ from this pipeline's "
                f"(stored {stored.get(key)!r}, now {current[key]!r}); start a new run instead"
            )


def _with_new_defaults(stored: Any, stages: list[Stage]) -> Any:
    """The stored stage descriptions, each completed with the parameters its stage gained
    since the run was recorded, at their defaults (a run recorded before `Generate` had a
    `transport` resumes under `transport="auto"`); a parameter set to anything but its
    default, or one the stored run had and the stage lost, still differs."""
    if not isinstance(stored, list) or len(stored) != len(stages):
        return stored
    out = []
    for described, stage in zip(stored, stages, strict=True):
        params = described.get("params") if isinstance(described, dict) else None
        if described.get("stage") != stage.name or not isinstance(params, dict):
            out.append(described)
            continue
        fields = type(stage).model_fields
        now = stage.describe()["params"]
        added = {
            k: v
            for k, v in now.items()
            if k not in params
            and k in fields
            and not fields[k].is_required()
            and getattr(stage, k) == fields[k].get_default(call_default_factory=True)
        }
        out.append({**described, "params": {**added, **params}})
    return out


@dataclass
class RunResult:
    """A finished run: its id, where its shards are, and ways to read them."""

    run_id: str
    run_dir: Path
    workspace: Path

    @property
    def output_dir(self) -> Path:
        return self.run_dir / "output"

    def to_arrow(self) -> pa.Table:
        files = sorted(self.output_dir.glob("part-*.parquet"))
        if not files:
            return pa.table({})
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")

    def to_polars(self) -> Any:
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    def to_hf(self) -> Any:
        import datasets

        return datasets.Dataset(self.to_arrow())

    def to_jsonl(self, path: str | Path) -> Path:
        import polars as pl

        path = Path(path)
        frame = pl.from_arrow(self.to_arrow())
        assert isinstance(frame, pl.DataFrame)
        frame.write_ndjson(path)
        return path

    def rejects(self) -> pa.Table:
        """Every removed row with its stage (`_stage`) and reason (`_reason`)."""
        import pyarrow.dataset as pads  # imports pandas: only when asked

        tables = []
        for stage_dir in sorted((self.run_dir / "rejects").glob("*")):
            files = sorted(stage_dir.glob("*.parquet"))
            if not files:
                continue
            t = pads.dataset([str(f) for f in files]).to_table()
            tables.append(t.append_column("_stage", pa.array([stage_dir.name] * t.num_rows)))
        if not tables:
            return pa.table({"id": pa.array([], pa.string()), "_reason": pa.array([], pa.string())})
        return pa.concat_tables(tables, promote_options="permissive")

    def funnel(self) -> list[dict[str, Any]]:
        with RunStore(self.workspace) as store:
            return store.funnel(self.run_id)
