"""Near-duplicate benchmark: assay's MinhashDedupe (and ExactDedupe) vs datasketch (as
distilabel uses it) vs datatrove's MinHash pipeline, on real text with planted duplicates
whose Jaccard is measured on normalised words (bench/dedupe_corpus.py builds the corpus).

    nice .venv/bin/python bench/dedupe.py                    # the comparison table
    nice .venv/bin/python bench/dedupe.py --scale 1000000    # assay alone, 1M rows, peak RSS

datatrove runs in its own venv (never an assay dependency); create it once with
    python3.11 -m venv bench/out/venv-datatrove
    bench/out/venv-datatrove/bin/pip install "datatrove[processing]" pyarrow xxhash orjson
Without it the datatrove row reads "failed" and the others still run. `assay_before` runs
the MinhashDedupe of a given git commit (`--before`, default the one before text
normalisation), exported with `git archive` into bench/out/assay-<commit>.

Each method runs in its own process, timed by CPU seconds (user + sys) and peak RSS from
wait4, and writes one cluster label per row. Metrics: recall per bucket = share of planted
pairs whose two rows share a cluster; `all J>=0.8` = over every planted pair whose measured
normalised Jaccard is >= 0.8; precision = share of removed rows whose normalised word
5-gram Jaccard with the row the method says it duplicates is >= 0.8 (assay: the row named
in the reject reason; datasketch: the first LSH match, as distilabel keeps it; datatrove
names none, so its cluster's kept row). Natural duplicates in the corpus count as correct.
`precision vs kept` measures every method against its cluster's kept row instead (rows
joined through chains count as wrong). docs/s per core = documents / CPU seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedupe_corpus import (  # noqa: E402
    BUCKETS,
    build,
    docstrings,
    jaccard,
    man_pages,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "dedupe"
DATATROVE_PY = HERE / "out" / "venv-datatrove" / "bin" / "python"
THRESHOLD = 0.8
BEFORE = "7123af5feb4f8770b7808f6849332d45290a2297"  # MinhashDedupe on raw \w+ words
WORD = re.compile(r"\w+")


# ---------------------------------------------------------------------- corpus


def build_scale_corpus(n_rows: int, seed: int = 0) -> Path:
    """n_rows documents of 50-250 words drawn from the real corpus' word frequencies; 10% of
    them are near duplicates (one substitution per 100 words, Jaccard ~0.9) of a row
    anywhere in the corpus. Built with array operations, written in 100k-row shards."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = OUT / f"scale-{n_rows}"
    if folder.exists():
        return folder
    vocab_texts = man_pages(5000) + docstrings([Path(os.__file__).parent], 20_000)
    freq = pl.Series(" ".join(vocab_texts).lower().split()).value_counts(sort=True)
    words, counts = freq[:, 0].to_list(), freq[:, 1].to_numpy()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 250, n_rows)
    is_dup = rng.random(n_rows) < 0.1
    sources = rng.choice(np.flatnonzero(~is_dup), int(is_dup.sum()))
    lengths[is_dup] = lengths[sources]
    offsets = np.zeros(n_rows + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cum = np.cumsum(counts / counts.sum())
    token = np.searchsorted(cum, rng.random(int(offsets[-1])) * cum[-1]).astype(np.int64)
    doc = np.repeat(np.arange(n_rows), lengths)
    pos = np.arange(len(token)) - offsets[doc]
    dup_tok = is_dup[doc]
    src_of = np.zeros(n_rows, np.int64)
    src_of[is_dup] = sources
    token[dup_tok] = token[offsets[src_of[doc[dup_tok]]] + pos[dup_tok]]
    swap = dup_tok & (pos % 100 == 7)
    token[swap] = len(words) + np.arange(int(swap.sum()))
    vocab = pa.concat_arrays(
        [pa.array(words), pa.array([f"zq{i}" for i in range(int(swap.sum()))])]
    )
    tmp = folder.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    truth = pa.table({"variant": np.flatnonzero(is_dup), "source": sources})
    pq.write_table(truth, folder.with_suffix(".truth.parquet"))
    shard = 100_000
    for s in range(0, n_rows, shard):
        e = min(s + shard, n_rows)
        lo, hi = offsets[s], offsets[e]
        lists = pa.ListArray.from_arrays(
            pa.array((offsets[s : e + 1] - lo).astype(np.int32)), vocab.take(pa.array(token[lo:hi]))
        )
        texts = pl.Series(lists).list.join(" ")
        pq.write_table(pa.table({"text": texts.to_arrow()}), tmp / f"part-{s // shard:04d}.parquet")
    tmp.rename(folder)
    return folder


# ---------------------------------------------------------------------- methods
# Each writes labels.parquet (id, cluster, kept) into its folder; run in a fresh process.


def _run_assay_stage(stage, corpus: str, folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from assay.curate.pipeline import Pipeline

    result = Pipeline([stage]).run(corpus, workspace=folder / "ws", progress="quiet")
    kept = result.to_arrow().select(["id", "cluster_id"])
    rejects = result.rejects()
    rejected = rejects.select(["id", "cluster_id"])
    labels = pa.concat_tables([kept, rejected]).rename_columns(["id", "cluster"])
    flags = [True] * kept.num_rows + [False] * rejected.num_rows
    labels = labels.append_column("kept", pa.array(flags))
    # the row each removed row was matched with, as its reject reason names it
    reasons = rejects["_reason"].combine_chunks()
    named = pc.extract_regex(reasons, r"duplicate of (?P<match>[^\s()]+)").field("match")
    matches = pa.concat_arrays([pa.nulls(kept.num_rows, pa.string()), named])
    labels = labels.append_column("match", matches)
    pq.write_table(labels, folder / "labels.parquet")


def method_assay(corpus: str, folder: Path) -> None:
    """MinhashDedupe with its defaults (normalised words, b x r chosen for 0.8, verify)."""
    from assay.operators.dedupe import MinhashDedupe

    stage = MinhashDedupe(column="text", threshold=THRESHOLD, ngram=5, num_perm=128)
    _run_assay_stage(stage, corpus, folder)


def method_assay_exact(corpus: str, folder: Path) -> None:
    """ExactDedupe with its defaults (normalised letters and digits hashed)."""
    from assay.operators.dedupe import ExactDedupe

    _run_assay_stage(ExactDedupe(columns=["text"]), corpus, folder)


method_assay_before = method_assay  # the same code path, imported from the older tree


def method_datasketch(corpus: str, folder: Path) -> None:
    """distilabel's MinHashDedup: MinHash.bulk over word 5-grams, then query-before-insert."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    table = pq.read_table(corpus)
    ids, texts = table["id"].to_pylist(), table["text"].to_pylist()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    order = {d: i for i, d in enumerate(ids)}
    cluster, match = {}, {}
    for start in range(0, len(texts), 1000):
        chunk = texts[start : start + 1000]
        tokenized = []
        for text in chunk:
            words = WORD.findall(text.lower())
            grams = {" ".join(words[i : i + 5]).encode() for i in range(len(words) - 4)}
            tokenized.append(grams or {" ".join(words).encode()})
        for offset, mh in enumerate(MinHash.bulk(tokenized, num_perm=128)):
            doc = ids[start + offset]
            found = lsh.query(mh)
            first = min(found, key=lambda d: order[d]) if found else None
            cluster[doc] = cluster[first] if found else doc
            match[doc] = first
            lsh.insert(doc, mh)
    kept = [d == c for d, c in cluster.items()]
    labels = pa.table(
        {
            "id": list(cluster),
            "cluster": list(cluster.values()),
            "kept": kept,
            "match": [match[d] for d in cluster],
        }
    )
    pq.write_table(labels, folder / "labels.parquet")


def method_datatrove(corpus: str, folder: Path) -> None:
    """datatrove's 4-step MinHash pipeline with its default config (5-grams, 14 x 8)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Words(WordTokenizer):
        """\\w+ words: NLTK's punkt data cannot be downloaded here, and this matches assay."""

        def word_tokenize(self, text: str) -> list[str]:
            return WORD.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    config = MinhashConfig()
    src = str(Path(corpus).parent)
    glob = Path(corpus).name
    reader = lambda: ParquetReader(src, glob_pattern=glob, text_key="text", id_key="id")  # noqa: E731
    w = str(folder)
    steps = [
        ([reader(), MinhashDedupSignature(f"{w}/sigs", config=config, language=Words())], 1),
        ([MinhashDedupBuckets(f"{w}/sigs", f"{w}/buckets", config=config)], config.num_buckets),
        (
            [
                MinhashDedupCluster(
                    f"{w}/buckets", f"{w}/remove", config=config, save_cluster_id=True
                )
            ],
            1,
        ),
        (
            [
                reader(),
                MinhashDedupFilter(
                    f"{w}/remove",
                    exclusion_writer=JsonlWriter(f"{w}/removed"),
                    load_cluster_ids=True,
                ),
                JsonlWriter(f"{w}/kept"),
            ],
            1,
        ),
    ]
    for i, (pipeline, tasks) in enumerate(steps):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=f"{w}/logs{i}").run()
    ids, clusters, kept = [], [], []
    for part in ("kept", "removed"):
        for f in sorted((folder / part).glob("*.jsonl.gz")):
            with gzip.open(f, "rt") as lines:
                for line in lines:
                    doc = json.loads(line)
                    ids.append(doc["id"])
                    found = doc.get("metadata", {}).get("minhash_cluster_id")
                    clusters.append(doc["id"] if found in (None, -1) else f"c{found}")
                    kept.append(part == "kept")
    # datatrove names no matched row: a removed row stands for its cluster's kept row
    labels = pa.table({"id": ids, "cluster": clusters, "kept": kept, "match": [None] * len(ids)})
    pq.write_table(labels, folder / "labels.parquet")


METHODS = {
    "assay": method_assay,
    "assay_exact": method_assay_exact,
    "assay_before": method_assay_before,
    "datasketch": method_datasketch,
    "datatrove": method_datatrove,
}


def before_tree(commit: str) -> Path:
    """The assay package of `commit`, exported once with `git archive` (reads git only)."""
    folder = HERE / "out" / f"assay-{commit[:10]}"
    if not (folder / "assay").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", commit, "assay"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


# ---------------------------------------------------------------------- measurement


def write_peak_rss(path: Path) -> None:
    """This process's peak RSS (VmHWM: counted from exec, unlike a forked child's
    ru_maxrss, which starts at the parent's size) and its own children's peak."""
    import resource

    status = Path("/proc/self/status").read_text()
    hwm_kb = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    path.write_text(json.dumps({"self_mb": hwm_kb / 1024, "children_mb": children_kb / 1024}))


def run_measured(method: str, corpus: Path, folder: Path, before: str = BEFORE) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    python = str(DATATROVE_PY) if method == "datatrove" else sys.executable
    cmd = [python, __file__, "--method", method, "--corpus", str(corpus), "--folder", str(folder)]
    root = before_tree(before) if method == "assay_before" else HERE.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    started = time.perf_counter()
    with open(folder / "stderr.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    peak = json.loads((folder / "peak_rss.json").read_text()) if status == 0 else {}
    return {
        "method": method,
        "ok": status == 0,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": max(peak.values(), default=float("nan")),
    }


def evaluate(corpus: Path, truth: Path, labels: Path) -> dict:
    import polars as pl

    texts = dict(pl.read_parquet(corpus).select("id", "text").iter_rows())
    lab = pl.read_parquet(labels)
    cluster = dict(lab.select("id", "cluster").iter_rows())
    pairs = pl.read_parquet(truth)
    found = [
        cluster.get(s) == cluster.get(v) for s, v in pairs.select("source", "variant").iter_rows()
    ]
    pairs = pairs.with_columns(pl.Series("found", found))
    recall = {b: pairs.filter(pl.col("bucket") == b)["found"].mean() for b in BUCKETS}
    recall["variants"] = pairs.filter(pl.col("bucket").is_in(["case_ws", "case_punct"]))[
        "found"
    ].mean()
    recall["all J>=0.8"] = pairs.filter(pl.col("jaccard") >= THRESHOLD)["found"].mean()
    jac = {b: pairs.filter(pl.col("bucket") == b)["jaccard"].mean() for b in BUCKETS}
    keeper = dict(lab.filter(pl.col("kept")).select("cluster", "id").iter_rows())
    removed_rows = lab.filter(~pl.col("kept")).select("id", "cluster", "match").rows()
    removed = len(removed_rows)
    vs_kept = sum(jaccard(texts[r], texts[keeper[c]]) >= THRESHOLD for r, c, _ in removed_rows)
    vs_named = sum(
        jaccard(texts[r], texts[m or keeper[c]]) >= THRESHOLD for r, c, m in removed_rows
    )
    return {
        "recall": recall,
        "mean_jaccard": jac,
        "removed": removed,
        "precision": vs_named / removed if removed else 1.0,
        "precision_vs_kept": vs_kept / removed if removed else 1.0,
        "n_docs": len(texts),
    }


def table_rows(results: list[dict]) -> str:
    cols = [*BUCKETS, "variants", "all J>=0.8"]
    head = (
        "| method | docs | wall s | CPU s | docs/s per core | peak RSS MB | removed | precision "
        "| precision vs kept | " + " | ".join(f"recall {b}" for b in cols) + " |"
    )
    sep = "|" + "---|" * (9 + len(cols))
    lines = [head, sep]
    for r in results:
        if not r["ok"]:
            lines.append(
                f"| {r['method']} | failed: see bench/out/dedupe/{r['method']}/stderr.log |"
            )
            continue
        e = r["eval"]
        lines.append(
            f"| {r['method']} | {e['n_docs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{e['n_docs'] / r['cpu_s']:.0f} | {r['peak_rss_mb']:.0f} | {e['removed']} | "
            f"{e['precision']:.4f} | {e['precision_vs_kept']:.4f} | "
            + " | ".join(f"{e['recall'][b]:.3f}" for b in cols)
            + " |"
        )
    return "\n".join(lines)


def compare(n_per_bucket: int, n_base: int, methods: list[str], before: str) -> None:
    corpus, truth = build(n_per_bucket, n_base, OUT)
    results = []
    load = [os.getloadavg()[0]]
    for m in methods:
        folder = OUT / f"{m}-{n_base}-{n_per_bucket}"
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        r = run_measured(m, corpus, folder, before)
        load.append(os.getloadavg()[0])
        if r["ok"]:
            r["eval"] = evaluate(corpus, truth, folder / "labels.parquet")
        results.append(r)
        print(json.dumps({k: v for k, v in r.items()}, default=str), flush=True)
    import polars as pl

    jac = (
        pl.read_parquet(truth)
        .group_by("bucket")
        .agg(pl.col("jaccard").mean(), pl.len())
        .sort("bucket")
    )
    report = "\n".join(
        [
            "command: `nice .venv/bin/python bench/dedupe.py "
            f"--base {n_base} --per-bucket {n_per_bucket} --methods {','.join(methods)}`",
            f"1-minute load average before and after each method: {load}",
            "",
            table_rows(results),
            "",
            "planted pairs (bucket, mean exact Jaccard, count): "
            + ", ".join(f"{b} {j:.3f} x{n}" for b, j, n in jac.iter_rows()),
        ]
    )
    (OUT / f"results-{n_base}-{n_per_bucket}.md").write_text(report + "\n")
    print(report)


def scale(n_rows: int) -> None:
    folder = build_scale_corpus(n_rows)
    work = OUT / f"scale-run-{n_rows}"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    r = run_measured("assay", folder, work)
    r["rows"] = n_rows
    if r["ok"]:
        import polars as pl

        lab = pl.read_parquet(work / "labels.parquet")
        r["removed"] = int((~lab["kept"]).sum())
        # planted pairs (ids are row positions) whose two rows share a cluster
        cluster = lab.with_columns(pl.col("id").cast(pl.Int64)).sort("id")["cluster"].to_numpy()
        truth = pl.read_parquet(folder.with_suffix(".truth.parquet"))
        same = cluster[truth["variant"].to_numpy()] == cluster[truth["source"].to_numpy()]
        r["planted_pairs"] = len(truth)
        r["recall"] = float(same.mean())
        r["docs_per_s_per_core"] = n_rows / r["cpu_s"]
    print(json.dumps(r))
    (OUT / f"scale-{n_rows}.json").write_text(json.dumps(r, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-bucket", type=int, default=1000, help="planted pairs per bucket")
    parser.add_argument("--base", type=int, default=50_000, help="real documents before planting")
    parser.add_argument("--methods", default="assay,assay_exact,assay_before,datasketch,datatrove")
    parser.add_argument("--before", default=BEFORE, help="commit that assay_before runs")
    parser.add_argument("--scale", type=int, help="run assay alone on this many synthetic rows")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        METHODS[args.method](args.corpus, Path(args.folder))
        write_peak_rss(Path(args.folder) / "peak_rss.json")
    elif args.scale:
        scale(args.scale)
    else:
        compare(args.per_bucket, args.base, args.methods.split(","), args.before)


if __name__ == "__main__":
    main()
