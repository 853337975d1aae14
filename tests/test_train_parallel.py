"""Trainings side by side (`train_concurrently`): each job in its own process gives the same
adapter, byte for byte, as training it here with the same thread count; both runs are recorded in the one workspace
store and both adapters registered (the store and the registry take cross-process locks);
a failed job is named. Also the locks themselves, from real second processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from local_tiny_model import build_lora_adapter, registered_tiny_model

from assay.curate.errors import AssayError
from assay.curate.store import RunStore
from assay.train.parallel import TrainJob, run_job, train_concurrently


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with registered_tiny_model(tmp_path_factory.mktemp("train-parallel")) as root:
        yield root


def rows(n: int, offset: int) -> list[dict]:
    return [
        {"id": f"q{k}", "prompt": f"What is {k}+{offset}?", "completion": f"{k + offset}"}
        for k in range(n)
    ]


def options(workspace: Path, name: str) -> dict:
    return dict(
        model="tiny", name=name, workspace=str(workspace), epochs=2.0, batch_size=4,
        learning_rate=5e-3, max_length=64, seed=0, save_steps=10_000, progress_every_s=0.01,
    )  # fmt: skip


def test_side_by_side_trainings_equal_in_process_ones_and_are_all_recorded(
    tiny: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    jobs = [
        TrainJob("sft", rows(12, 1), options(tmp_path / "side", "a")),
        TrainJob("sft", rows(12, 7), options(tmp_path / "side", "b")),
    ]
    fits = train_concurrently(jobs, cores=2)
    assert [f.model_name for f in fits] == ["tiny+a", "tiny+b"]  # in the order of the jobs

    # the same jobs here, one after the other, at the one thread each process had (on this
    # tiny model the thread count changes the last bits of a sum; on the embedded model's
    # LoRA it did not, see parallel.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = [
            run_job(TrainJob("sft", job.rows, options(tmp_path / "alone", f"{name}-alone")))
            for job, name in zip(jobs, "ab", strict=True)
        ]
    finally:
        torch.set_num_threads(threads)
    for fit, reference in zip(fits, alone, strict=True):
        got = (fit.adapter_dir / "adapter_model.safetensors").read_bytes()
        want = (reference.adapter_dir / "adapter_model.safetensors").read_bytes()
        assert got == want

    with RunStore(tmp_path / "side") as store:
        runs = store.con.execute("select run_id, status from train_runs order by run_id").fetchall()
        steps = store.con.execute(
            "select run_id, count(*) from train_metrics group by run_id"
        ).fetchall()
    assert sorted(r for r, _ in runs) == sorted(f.run_id for f in fits)
    assert {status for _, status in runs} == {"done"}
    assert {r for r, _ in steps} == {f.run_id for f in fits}
    from assay.models.registry import resolve_model

    assert resolve_model("tiny+a").adapter == fits[0].adapter_dir.resolve()
    assert resolve_model("tiny+b").adapter == fits[1].adapter_dir.resolve()
    # each process printed its progress lines, with the job's name, not TRL's metric dicts
    out = capfd.readouterr().out
    assert "a: step 6/6" in out and "b: step 6/6" in out
    assert "'loss':" not in out


def test_a_failed_job_is_named(tiny: Path, tmp_path: Path) -> None:
    bad = {**options(tmp_path, "broken"), "model": "tiny+no-such-adapter"}
    jobs = [
        TrainJob("sft", rows(4, 1), options(tmp_path, "fine")),
        TrainJob("sft", rows(4, 1), bad),
    ]
    with pytest.raises(AssayError, match=r"training 'broken' failed: .*no-such-adapter"):
        train_concurrently(jobs, cores=2)
    with pytest.raises(AssayError, match="unknown training method"):
        TrainJob("pretrain", [])


def test_a_store_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    RunStore(tmp_path).close()  # create it
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time, duckdb
                con = duckdb.connect({str(tmp_path / "assay.duckdb")!r})
                print("held", flush=True)
                time.sleep(1.5)
                con.close()
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(AssayError, match="is another assay process writing"):
        RunStore(tmp_path, lock_wait_s=0)
    started = time.monotonic()
    with RunStore(tmp_path) as store:  # waits for the holder to close the file
        assert store.runs() == []
    assert time.monotonic() - started > 0.3
    holder.wait()


def test_adapters_registered_by_processes_at_once_are_all_kept(tiny: Path, tmp_path: Path) -> None:
    adapter = build_lora_adapter(tiny / "model", tmp_path / "lora", seed=1)
    script = textwrap.dedent(f"""
        import sys
        from assay.models.registry import register_adapter
        for k in range(15):
            register_adapter(f"p{{sys.argv[1]}}-{{k}}", {str(adapter)!r}, base="tiny")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)]) for i in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    from assay.models.registry import ModelRegistry

    names = set(ModelRegistry.load().adapters)
    assert {f"tiny+p{i}-{k}" for i in range(3) for k in range(15)} <= names
