"""Viewer page times at 1,000,000 rows: the dataset browser's DuckDB queries over Parquet.

Builds a workspace with one run whose output is N reasoning-trace rows (the traces contract
plus verifier columns) in 10,000-row shards, serves it with `assay view` (a real uvicorn
process) and times HTTP GETs of the pages a person clicks through: first page, a deep page,
the last page, filters (cold, then the next page of the same filter), a text search, a sort
and a row page. Each page: the first (cold) time and the median of 5 repeats. Then `--cold`
new servers, one after another: each one's first dataset page and a search straight after
it (median and range over the servers). The first server's resident memory is read at
start, after the pages, once the written index's copy into memory has settled (then a new
search and its page 900 are timed over memory), and its peak (VmHWM).

The run's search index is written as `Pipeline.run` writes it at the end of a run
(`write_search_index`, timed); `--no-run-index` leaves it out, as for a run made before
that: the viewer then builds the index itself in the background after the first page, and
a search during that build reads the shards.

Baselines measured in the same run, per page of a filter: pyarrow reading the shards into
memory then filtering and slicing (what a notebook or a load-it-all viewer does), and a
polars lazy scan (a strong columnar peer, no server).

    python bench/viewer.py --rows 1000000 [--workspace DIR] [--json bench/results/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

STEP = pa.struct([("step_id", pa.string()), ("text", pa.string())])
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build(workspace: Path, rows: int, shard: int = 10_000) -> str:
    from assay.curate.store import RunStore

    with RunStore(workspace) as store:
        run_id = store.new_run("bench-traces", None, {"bench": True})
        store.record_stages(run_id, [{"stage": "ReasoningTraces", "params": {}}])
        store.set_status(run_id, "done")
    out = workspace / "runs" / run_id / "output"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for start in range(0, rows, shard):
        n = min(shard, rows - start)
        ids = [f"q{(start + i) // 4}/s{(start + i) % 4}" for i in range(n)]
        a = [rng.randint(0, 999) for _ in range(n)]
        b = [rng.randint(0, 999) for _ in range(n)]
        ok = [rng.random() < 0.6 for _ in range(n)]
        words = [" ".join(rng.choice(NUMBERS) for _ in range(6)) for _ in range(n)]
        steps = [
            [
                {"step_id": f"{i}#0", "text": f"Start from {x}."},
                {"step_id": f"{i}#1", "text": f"Add {y} ({w})."},
                {"step_id": f"{i}#2", "text": f"So {x + y if c else x + y + 1}."},
            ]
            for i, x, y, c, w in zip(ids, a, b, ok, words, strict=True)
        ]
        table = pa.table(
            {
                "id": ids,
                "parent_id": [i.split("/")[0] for i in ids],
                "question": [f"What is {x}+{y}?" for x, y in zip(a, b, strict=True)],
                "reasoning": ["\n".join(s["text"] for s in st) for st in steps],
                "final_answer": [
                    str(x + y if c else x + y + 1) for x, y, c in zip(a, b, ok, strict=True)
                ],
                "steps": pa.array(steps, pa.list_(STEP)),
                "correct": ok,
                "correct_score": [1.0 if c else 0.0 for c in ok],
                "correct_reason": ["ok" if c else "wrong answer" for c in ok],
                "pass_rate": [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(n)],
            }
        )
        pq.write_table(table, out / f"part-{start // shard:06d}.parquet")
    return run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(client: httpx.Client) -> None:
    for _ in range(100):
        try:
            client.get("/")
            return
        except httpx.TransportError:
            time.sleep(0.3)


def rss(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB (Linux /proc); VmHWM: its peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settle(pid: int, limit_s: float = 90) -> float:
    """Wait until the server's resident memory stops growing (the written index's copy into
    memory, started by the first search, is done); returns the seconds waited."""
    start = time.perf_counter()
    last, still = rss(pid), 0
    while time.perf_counter() - start < limit_s and still < 3:
        time.sleep(1)
        now = rss(pid)
        still = still + 1 if abs(now - last) < 2 else 0
        last = now
    return time.perf_counter() - start


def timed(client: httpx.Client, url: str, params: list | None = None) -> float:
    start = time.perf_counter()
    r = client.get(url, params=params)
    elapsed = time.perf_counter() - start
    if r.status_code != 200:
        raise SystemExit(f"{url} {params}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold", type=int, default=5, help="new servers for the cold pages")
    parser.add_argument("--workspace", type=Path, help="reuse (or make) the rows here")
    parser.add_argument("--no-run-index", action="store_true", help="no index from the run")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="assay-viewer-bench-")) / "ws"
    t0 = time.perf_counter()
    run = reuse(ws, args.rows) or build(ws, args.rows)
    print(f"{args.rows:,} rows ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    index_file = ws / "runs" / run / "search" / "output.duckdb"
    index_file.unlink(missing_ok=True)
    index_s = float("nan")
    if not args.no_run_index:  # in a process of its own, as `assay run` is
        t0 = time.perf_counter()
        code = "import sys; from pathlib import Path; from assay.curate.pipeline import "
        code += "write_search_index as w; assert w(Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", code, str(ws / "runs" / run)], check=True)
        index_s = time.perf_counter() - t0
        size = index_file.stat().st_size / 1e6
        print(f"run's search index written in {index_s:.1f} s ({size:.0f} MB)", file=sys.stderr)
    # the written index's pages reach the disk now, not while the pages are timed
    t0 = time.perf_counter()
    os.sync()
    print(f"sync {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    port = free_port()
    assay = str(Path(sys.executable).parent / "assay")
    proc = subprocess.Popen([assay, "view", "--workspace", str(ws), "--port", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            wait_up(client)
            rss0 = rss(proc.pid)
            data = f"/runs/{run}/data"
            last = -(-args.rows // 50)
            wrong = [("col", "correct"), ("op", "is false"), ("val", "")]
            two = [("col", "pass_rate"), ("op", ">="), ("val", "0.75")]
            two += [("col", "correct_score"), ("op", ">"), ("val", "0.5")]
            pages = [
                ("runs list", "/", None),
                ("run funnel", f"/runs/{run}", None),
                ("dataset page 1", data, None),
                ("dataset page 10,000 (offset 500k)", data, [("page", "10000")]),
                (f"dataset last page ({last:,})", data, [("page", str(last))]),
                ("filter correct is false, page 1", data, wrong),
                ("same filter, page 2", data, [*wrong, ("page", "2")]),
                ("same filter, page 5,000", data, [*wrong, ("page", "5000")]),
                ("two filters (pass_rate, score)", data, two),
                ("text search 'seven nine'", data, [("q", "seven nine")]),
                ("same search, page 900", data, [("q", "seven nine"), ("page", "900")]),
                ("text search 'q12345/' (4 rows)", data, [("q", "q12345/")]),
                (
                    "search + filter + sort",
                    data,
                    [*wrong, ("q", "eight two"), ("sort", "pass_rate")],
                ),
                (
                    "sort by pass_rate desc, page 3",
                    data,
                    [("sort", "pass_rate"), ("desc", "1"), ("page", "3")],
                ),
                ("row page (middle id)", f"/runs/{run}/row", [("id", f"q{args.rows // 8}/s1")]),
            ]
            results = []
            for name, url, params in pages:
                cold = timed(client, url, params)
                warm = statistics.median(timed(client, url, params) for _ in range(args.repeats))
                results.append((name, cold, warm))
            rss_pages = rss(proc.pid)
            settled_s = settle(proc.pid)
            # after the copy into memory: a search not made before, a deep page of it
            later = [("q", "five three"), ("page", "900")]
            for name, params in (
                ("settled: search 'five three', page 900 first", later),
                ("settled: search 'five three', page 1", [("q", "five three")]),
                ("settled: same search 'seven nine', page 900", [("q", "seven nine"), *later[1:]]),
            ):
                cold = timed(client, data, params)
                warm = statistics.median(timed(client, data, params) for _ in range(args.repeats))
                results.append((name, cold, warm))
        rss_mb = rss(proc.pid)
        peak_mb = rss(proc.pid, "VmHWM")
        proc.terminate()
        proc.wait(timeout=10)
        # new servers: the first dataset page, then a search straight after it (without the
        # run's index, while the viewer's own build runs: the worst case for a first search)
        servers: dict[str, list[float]] = {"first": [], "search": [], "page2": []}
        for k in range(args.cold):
            proc = subprocess.Popen([assay, "view", "--workspace", str(ws), "--port", str(port)])
            with httpx.Client(base_url=base, timeout=120) as client:
                wait_up(client)
                servers["first"].append(timed(client, data))
                servers["search"].append(timed(client, data, [("q", "nine seven")]))
                servers["page2"].append(timed(client, data, [("page", "2")]))
            if k < args.cold - 1:
                proc.terminate()
                proc.wait(timeout=10)
        for key, name in (
            ("first", "new server: dataset page 1"),
            ("search", "new server: a search right after it"),
            ("page2", "new server: then page 2"),
        ):
            results.append((name, servers[key][0], statistics.median(servers[key])))
        files = sorted(str(p) for p in (ws / "runs" / run / "output").glob("*.parquet"))
        base_rows = baselines(files)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    load = os.getloadavg()
    print(
        f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; at the start: {load0}"
    )
    print(
        f"server resident memory: {rss0:.0f} MB at start, {rss_pages:.0f} MB after the pages, "
        f"{rss_mb:.0f} MB settled ({settled_s:.0f} s later), peak {peak_mb:.0f} MB"
    )
    print(f"run's search index: {'not written' if index_s != index_s else f'{index_s:.1f} s'}")
    for key, values in servers.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"new servers, {key}: median {statistics.median(values):.0f} ms ({shown})")
    print(
        f"| page ({args.rows:,} rows, {len(files)} shards) | first ms | median of {args.repeats} ms |"
    )
    print("|---|---:|---:|")
    for name, cold, warm in results:
        print(f"| {name} | {cold:.0f} | {'-' if warm != warm else f'{warm:.0f}'} |")
    print()
    print("| baseline: filter correct is false, page 2 (50 rows) | ms |")
    print("|---|---:|")
    for name, ms in base_rows:
        print(f"| {name} | {ms:.0f} |")
    record = {
        "rows": args.rows,
        "shards": len(files),
        "run_index": not args.no_run_index,
        "run_index_s": None if index_s != index_s else index_s,
        "load_start": load0,
        "load_end": " ".join(f"{x:.1f}" for x in load),
        "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "rss_mb": [rss0, rss_mb],  # at start; after the pages, settled
        "rss_after_pages_mb": rss_pages,
        "rss_peak_mb": peak_mb,
        "settle_s": settled_s,
        "pages": [
            {"page": n, "first_ms": c, "median_ms": None if w != w else w} for n, c, w in results
        ],
        "new_servers_ms": servers,
        "baselines": [{"baseline": n, "ms": ms} for n, ms in base_rows],
    }
    print(json.dumps(record), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def reuse(ws: Path, rows: int) -> str | None:
    """The run of an earlier `build(ws, rows)` (same rows: the build is seeded), or None."""
    runs = sorted((ws / "runs").glob("*/output")) if ws.is_dir() else []
    for out in runs:
        files = sorted(out.glob("*.parquet"))
        if files and sum(pq.ParquetFile(f).metadata.num_rows for f in files) == rows:
            return out.parent.name
    return None


def baselines(files: list[str]) -> list[tuple[str, float]]:
    import polars as pl
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    out = []
    start = time.perf_counter()
    table = pads.dataset(files).to_table()
    page = table.filter(pc.invert(table["correct"])).slice(50, 50).to_pylist()
    out.append(
        (
            "pyarrow: read every shard into memory, filter, slice",
            (time.perf_counter() - start) * 1000,
        )
    )
    assert len(page) == 50
    start = time.perf_counter()
    page = pl.scan_parquet(files).filter(~pl.col("correct")).slice(50, 50).collect().to_dicts()
    out.append(
        (
            "polars lazy scan, filter, slice (no server, no count)",
            (time.perf_counter() - start) * 1000,
        )
    )
    start = time.perf_counter()
    total = pl.scan_parquet(files).filter(~pl.col("correct")).select(pl.len()).collect().item()
    out.append(
        (f"polars count of the filter ({total:,} rows)", (time.perf_counter() - start) * 1000)
    )
    return out


if __name__ == "__main__":
    main()
