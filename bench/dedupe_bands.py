"""LSH shape trade-off on the dedupe benchmark corpus: candidate pairs, CPU seconds and
recall of pairs planted at Jaccard 0.80 for a few b x r shapes (threshold 0.8, verify on).

    nice .venv/bin/python bench/dedupe_bands.py --base 70000 --per-bucket 1000

Needs the corpus bench/dedupe.py built (bench/out/dedupe/corpus-<base>-<per-bucket>.parquet).
Each shape runs MinhashDedupe.fit in this process on the whole corpus as one table in
batches of 10,000 rows; CPU seconds are this process's user + sys time for the fit.
"""

from __future__ import annotations

import argparse
import resource
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from assay.operators.dedupe import MinhashDedupe
from assay.operators.dedupe.lsh import candidate_probability

OUT = Path(__file__).resolve().parent / "out" / "dedupe"
SHAPES = [(18, 7), (21, 6), (14, 8)]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=int, default=70_000)
    parser.add_argument("--per-bucket", type=int, default=1000)
    args = parser.parse_args()
    tag = f"{args.base}-{args.per_bucket}"
    table = pq.read_table(OUT / f"corpus-{tag}.parquet")
    truth = pl.read_parquet(OUT / f"truth-{tag}.parquet")
    position = {d: i for i, d in enumerate(table["id"].to_pylist())}
    at_080 = truth.filter(pl.col("bucket") == "j0.80")
    src = np.array([position[d] for d in at_080["source"]])
    var = np.array([position[d] for d in at_080["variant"]])
    batches = table.to_batches(max_chunksize=10_000)
    print("| b x r | P(0.6) | P(0.8) | candidate pairs | fit CPU s | recall j0.80 |")
    print("|---|---|---|---|---|---|")
    for bands, rows in SHAPES:
        stage = MinhashDedupe(threshold=0.8, bands=bands, rows=rows)
        started = cpu()
        stage.fit(lambda: (pa.Table.from_batches([b]) for b in batches))
        spent = cpu() - started
        out = stage.process(table)  # kept rows, and the removed ones with their cluster
        parts = [out.kept, out.rejected] if hasattr(out, "rejected") else [out]
        cluster = {}
        for part in parts:
            ids, clusters = part["id"].to_pylist(), part["cluster_id"].to_pylist()
            cluster.update(zip(ids, clusters, strict=True))
        ids = table["id"].to_pylist()
        found = np.mean([cluster[ids[s]] == cluster[ids[v]] for s, v in zip(src, var, strict=True)])
        print(
            f"| {bands} x {rows} | {candidate_probability(0.6, bands, rows):.3f} | "
            f"{candidate_probability(0.8, bands, rows):.3f} | {stage.fit_stats.pairs} | "
            f"{spent:.1f} | {found:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
