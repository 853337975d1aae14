"""Several trainings at once, each in a process of its own with a share of the cores.

A LoRA step of a 135M model on a CPU gains little from a second thread (the intern
student, batch 8, 128 tokens: 11.0 s a step on one thread, 8.3 s on two), so two trainings
side by side, one thread each, end in about 0.7x the time of one after the other on two
threads. A job gives the adapter it would give trained alone with the same thread count
(same bytes, tested); on the embedded model's LoRA the thread count itself did not change
the adapter either (10 steps, same bytes at 1 and 2 threads), on other shapes it can
change the last bits of a sum.

Each job runs in `python -m assay.train.parallel JOB RESULT` (a fresh interpreter: no fork
after torch's thread pool exists, and no re-import of the caller's `__main__`, which a
`multiprocessing` spawn would do). It records its run in the workspace's store and
registers its adapter exactly as in-process training does; the store and the model
registry take cross-process locks, so the jobs' writes never collide.

    fits = train_concurrently([
        TrainJob("sft", curated_rows, {"model": "smollm2-135m", "name": "a", ...}),
        TrainJob("sft", raw_rows, {"model": "smollm2-135m", "name": "b", ...}),
    ])
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.train.runner import TrainResult

METHODS = ("sft", "distill", "dpo", "grpo")


@dataclass
class TrainJob:
    """One training: `method` (a module of `assay.train` with a function of that name),
    its rows and its options (the method's settings, as keyword arguments)."""

    method: str
    rows: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AssayError(f"unknown training method {self.method!r}; one of {METHODS}")


def run_job(job: TrainJob) -> TrainResult:
    """Train one job in this process."""
    module = importlib.import_module(f"assay.train.{job.method}")
    return getattr(module, job.method)(job.rows, **job.options)


def train_concurrently(
    jobs: list[TrainJob], cores: int | None = None, poll_s: float = 0.5
) -> list[TrainResult]:
    """Run `jobs` at most `cores` at a time (default: the machine's), each in its own
    process with `cores // running` torch threads; results in the order of `jobs`.

    Jobs start in the order given (put the longest first). With one core, or one job, they
    run here, one after another. A failed job stops the others and raises with its error."""
    cores = cores or os.cpu_count() or 1
    workers = max(1, min(len(jobs), cores))
    if workers == 1:
        return [run_job(job) for job in jobs]
    threads = max(1, cores // workers)
    results: list[TrainResult | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="assay-train-") as tmp:
        waiting = list(enumerate(jobs))
        running: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
        try:
            while waiting or running:
                while waiting and len(running) < workers:
                    i, job = waiting.pop(0)
                    running[i] = _start(job, Path(tmp) / str(i), threads)
                for i, (proc, result_path) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[i]
                    results[i] = _collect(proc, result_path, jobs[i])
                time.sleep(poll_s)
        finally:
            for proc, _ in running.values():
                proc.kill()
                proc.wait()
    return [r for r in results if r is not None]


def _start(job: TrainJob, base: Path, threads: int) -> tuple[subprocess.Popen[bytes], Path]:
    job_path, result_path = base.with_suffix(".job"), base.with_suffix(".result")
    job_path.write_bytes(pickle.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "assay.train.parallel", str(job_path), str(result_path)]
    return subprocess.Popen(command, env=env), result_path


def _collect(proc: subprocess.Popen[bytes], result_path: Path, job: TrainJob) -> TrainResult:
    outcome = pickle.loads(result_path.read_bytes()) if result_path.exists() else None
    if proc.returncode == 0 and isinstance(outcome, TrainResult):
        return outcome
    name = job.options.get("name") or job.method
    detail = outcome if isinstance(outcome, str) else f"the process exited with {proc.returncode}"
    raise AssayError(f"training {name!r} failed: {detail}")


def _main(argv: list[str]) -> int:
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job: TrainJob = pickle.loads(job_path.read_bytes())
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        result: Any = run_job(job)
        code = 0
    except BaseException as exc:  # the parent raises it with the job's name
        traceback.print_exc()
        result, code = f"{type(exc).__name__}: {exc}", 1
    result_path.write_bytes(pickle.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
