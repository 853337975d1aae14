"""Engine overhead: N rows through normalise -> min-length filter -> exact dedupe.

Runs the same work several ways, each in its own subprocess so peak RSS is its own:
- assay: `Pipeline([Normalize, MinLength, ExactDedupe])` from a Parquet file, with run-store
  bookkeeping, rejects kept and Parquet shards written, and (as `Pipeline.run` does by
  default) the viewer's search index of the output written at the end;
- assay-no-index: the same pipeline with `search_index=False`: the pipeline's own work, what
  the polars query does too;
- assay-1-worker: that, one batch at a time (`cpu_workers=1`, the engine before it used
  every core);
- polars: the same three steps as one lazy query, written to one Parquet file.

    python bench/engine.py --rows 1000000 [--repeat 3]

Prints a Markdown table row per engine and run (rows/s, seconds, CPU seconds, the imports'
share, peak RSS MiB, rows out) and, per run, the ratios of each assay row to polars with and
without the imports.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "data",
    "model",
    "train",
    "judge",
    "curate",
    "prompt",
    "answer",
    "reason",
    "token",
    "batch",
    "filter",
    "dedupe",
    "score",
    "assay",
    "engine",
    "small",
    "large",
    "teacher",
    "student",
    "verify",
    "tool",
    "call",
    "query",
    "table",
    "column",
    "row",
    "Arrow",
    "Parquet",
    "DuckDB",
    "polars",
    "cluster",
    "keeper",
    "threshold",
    "signature",
    "shard",
    "stream",
]


def make_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """Synthetic sentences; ~8% exact duplicates (some re-cased/re-spaced), ~3% short rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    writer = None
    chunk = 100_000
    made: list[str] = []
    for start in range(0, rows, chunk):
        texts = []
        for _ in range(min(chunk, rows - start)):
            r = rng.random()
            if made and r < 0.08:
                base = rng.choice(made)
                texts.append(base.upper() if r < 0.04 else "  " + base.replace(" ", "   "))
            elif r < 0.11:
                texts.append(rng.choice(WORDS))
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
                texts.append(text)
                if len(made) < 50_000:
                    made.append(text)
        table = pa.table({"text": texts})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=65_536)
    assert writer is not None
    writer.close()


def run_assay(
    source: str, workspace: str, cpu_workers: int | None = None, search_index: bool = True
) -> dict:
    from assay.curate.executors.local import LocalExecutor
    from assay.curate.pipeline import Pipeline
    from assay.operators.dedupe.exact import ExactDedupe
    from assay.operators.text import MinLength, Normalize

    pipeline = Pipeline(
        [
            Normalize(column="text", lowercase=True),
            MinLength(column="text", chars=20),
            # the text is normalised already: hash it as it is
            ExactDedupe(columns=["text"], lowercase=False, whitespace=False, unicode_form=None),
        ],
        batch_size=10_000,
    )
    executor = LocalExecutor(batch_size=10_000, cpu_workers=cpu_workers)
    result = pipeline.run(
        source,
        workspace=workspace,
        progress="quiet",
        executor=executor,
        search_index=search_index,
    )
    import pyarrow.parquet as pq

    rows_out = sum(pq.read_metadata(p).num_rows for p in result.output_dir.glob("*.parquet"))
    return {"rows_out": rows_out}


def run_polars(source: str, workspace: str) -> dict:
    import polars as pl

    text = pl.col("text").str.normalize("NFKC").str.replace_all(r"\s{2,}|[^\S ]", " ")
    text = text.str.strip_chars().str.to_lowercase()
    out = Path(workspace) / "polars.parquet"
    (
        pl.scan_parquet(source)
        .with_columns(text.alias("text"))
        .filter(pl.col("text").str.len_chars() >= 20)
        .unique(subset="text", keep="first", maintain_order=True)
        .sink_parquet(out)
    )
    return {"rows_out": pl.scan_parquet(out).select(pl.len()).collect().item()}


IMPORTS = {
    "assay": (
        "assay.curate.executors.local",
        "assay.curate.pipeline",
        "assay.operators.dedupe.exact",
        "assay.operators.text",
        "pyarrow.parquet",
    ),
    "polars": ("polars",),
}
IMPORTS["assay-no-index"] = IMPORTS["assay-1-worker"] = IMPORTS["assay"]
ENGINES = ("polars", "assay", "assay-no-index", "assay-1-worker")


def child(engine: str, source: str, workspace: str) -> None:
    import importlib

    started = time.perf_counter()
    cpu = time.process_time()
    for module in IMPORTS[engine]:  # timed apart: imports are not the engine's work
        importlib.import_module(module)
    import_seconds = time.perf_counter() - started
    import_cpu = time.process_time() - cpu
    engines = {
        "assay": run_assay,
        "assay-no-index": lambda s, w: run_assay(s, w, search_index=False),
        "assay-1-worker": lambda s, w: run_assay(s, w, cpu_workers=1, search_index=False),
        "polars": run_polars,
    }
    info = engines[engine](source, workspace)
    info["seconds"] = time.perf_counter() - started
    info["cpu_seconds"] = time.process_time() - cpu
    info["import_seconds"] = import_seconds
    info["import_cpu_seconds"] = import_cpu
    info["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(info))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of every engine")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "SOURCE", "WORKSPACE"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    runs: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "corpus.parquet"
        make_corpus(source, args.rows)
        for run in range(args.repeat):
            results = {}
            for engine in ENGINES:
                ws = Path(tmp) / f"{engine}-{run}"
                ws.mkdir()
                out = subprocess.run(
                    [sys.executable, __file__, "--child", engine, str(source), str(ws)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(results)
    print(f"rows: {args.rows:,}; seconds and CPU s include the imports (also shown apart)")
    print("| run | engine | seconds | rows/s | CPU s | import s (CPU) | peak RSS MiB | rows out |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for k, results in enumerate(runs, start=1):
        for engine, r in results.items():
            print(
                f"| {k} | {engine} | {r['seconds']:.2f} | {args.rows / r['seconds']:,.0f} | "
                f"{r['cpu_seconds']:.2f} | {r['import_seconds']:.2f} "
                f"({r['import_cpu_seconds']:.2f}) | {r['peak_rss_mib']:,.0f} | "
                f"{r['rows_out']:,} |"
            )
    for k, results in enumerate(runs, start=1):
        p = results["polars"]
        for engine in ENGINES[1:]:
            a = results[engine]
            wall, cpu = a["seconds"] / p["seconds"], a["cpu_seconds"] / p["cpu_seconds"]
            run_wall = (a["seconds"] - a["import_seconds"]) / (p["seconds"] - p["import_seconds"])
            run_cpu = (a["cpu_seconds"] - a["import_cpu_seconds"]) / (
                p["cpu_seconds"] - p["import_cpu_seconds"]
            )
            print(
                f"run {k}: {engine} / polars: wall time {wall:.2f}x, CPU {cpu:.2f}x; "
                f"without imports: wall {run_wall:.2f}x, CPU {run_cpu:.2f}x"
            )
            if a["rows_out"] != p["rows_out"]:
                print(f"WARNING: {engine} and polars disagree on rows out")


if __name__ == "__main__":
    main()
