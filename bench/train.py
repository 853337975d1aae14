"""Training benchmarks on the embedded model (SmolLM2-135M) on this CPU.

Stages (each writes bench/results/train_<stage>.json; `summary` writes train.md):
- `throughput`: SFT tokens/s, plain TRL `SFTTrainer` vs `assay.train.sft`, packing off / on,
  interleaved, each run in a child process (same data, same settings): tokens per second of
  wall time and per CPU-second (the load-robust figure on a shared machine), peak RSS;
  `--side-by-side` runs each pair's two runs at the same time, one core each, and reports the
  per-pair ratios with their mean, standard error and 95% interval.
- `sft`: held-out arithmetic accuracy before / after SFT on verified examples.
- `grpo`: GRPO from the SFT adapter, seconds per step, accuracy after.
- `distill`: context distillation vs sequence-level distillation on the same rows.
- `general`: MMLU / ARC subsets for the base model and the SFT student.

Usage: .venv/bin/python bench/train.py sft --n 256 --epochs 2   (then grpo, distill, ...)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"
WS = os.environ.get("ASSAY_BENCH_WS", "/tmp/assay-bench-train")
BASE = "smollm2-135m"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(stage: str, data: dict) -> None:
    data["peak_rss_mb"] = rss_mb()
    data["load_avg"] = os.getloadavg()
    (RESULTS / f"train_{stage}.json").write_text(json.dumps(data, indent=2, default=str))
    print(json.dumps(data, indent=2, default=str))


def verified_rows(n: int) -> list[dict]:
    """Task rows whose target passes the task's verifier (the curation step)."""
    from assay.train.tasks import get_task, task_rows

    task = get_task("arithmetic")
    rows = task_rows("arithmetic", "sft", n * 2, "short")
    answers = {r["id"]: r["answer"] for r in task.rows("train")[: n * 2]}
    kept = [r for r in rows if task.verifier.check(r["completion"], answers[r["id"]], r).correct]
    return kept[:n]


def trivial_baseline(limit: int) -> dict:
    """Always answer the most common answer of the train split (the floor SFT must beat)."""
    import math
    from collections import Counter

    from assay.train.tasks import get_task

    task = get_task("arithmetic")
    mode, _ = Counter(r["answer"] for r in task.rows("train")).most_common(1)[0]
    test = task.rows("test")[:limit]
    p = sum(r["answer"] == mode for r in test) / len(test)
    return {
        "answer": mode,
        "n": len(test),
        "accuracy": p,
        "stderr": math.sqrt(p * (1 - p) / len(test)),
    }


def acc(model: str, style: str, limit: int) -> dict:
    from assay.train.eval import evaluate

    return evaluate([model], ["arithmetic"], style, limit=limit, workspace=WS)[0]


def stage_sft(args) -> None:
    from assay.train.sft import sft

    steps = args.steps
    out = {
        "n": args.n,
        "epochs": args.epochs,
        "max_steps": steps,
        "lr": args.lr,
        "batch": args.batch,
        "test_n": args.test,
    }
    out["trivial"] = trivial_baseline(args.test)
    previous_path = RESULTS / "train_sft.json"
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else {}
    if not args.skip_before:
        out["base_short"] = acc(BASE, "short", args.test)
    elif previous.get("base_short", {}).get("n") == args.test:
        # greedy decoding of the same base on the same held-out rows: the earlier run's number
        out["base_short"] = {**previous["base_short"], "from_run": previous.get("run_id")}
    save("sft", out)
    rows = verified_rows(args.n)
    out["verified_rows"] = len(rows)
    t = time.perf_counter()
    result = sft(
        rows,
        model=BASE,
        name="bench-sft",
        workspace=WS,
        output_dir=f"{WS}/sft",
        epochs=args.epochs,
        max_steps=steps,
        batch_size=args.batch,
        max_length=128,
        learning_rate=args.lr,
        resume=False,
    )
    out["train_s"] = time.perf_counter() - t
    out["run_id"], out["model"] = result.run_id, result.model_name
    out["losses"] = [h["loss"] for h in result.log_history if "loss" in h]
    out["train_log"] = [h for h in result.log_history if "train_runtime" in h]
    save("sft", out)
    out["student_short"] = acc(result.model_name, "short", args.test)
    save("sft", out)


def stage_grpo(args) -> None:
    from assay.train.grpo import grpo
    from assay.train.tasks import get_task, task_rows

    student = f"{BASE}+bench-sft"
    rows = task_rows("arithmetic", "grpo", 400, "short")[256 : 256 + args.steps * 2]
    out = {"steps": args.steps, "test_n": args.test, "start": student}
    if not args.skip_before:
        out["before"] = acc(student, "short", args.test)
    t = time.perf_counter()
    result = grpo(
        rows,
        [get_task("arithmetic").verifier],
        model=student,
        name="bench-grpo",
        workspace=WS,
        output_dir=f"{WS}/grpo",
        max_steps=args.steps,
        resume=False,
        num_generations=4,
        batch_size=8,
        max_completion_length=16,
        learning_rate=args.grpo_lr,
        patience=args.steps + 1,
    )
    out["train_s"] = time.perf_counter() - t
    out["s_per_step"] = out["train_s"] / args.steps
    out["run_id"] = result.run_id
    logs = [h for h in result.log_history if "reward" in h]
    out["reward"] = [h["reward"] for h in logs]
    out["frac_reward_zero_std"] = [h["frac_reward_zero_std"] for h in logs]
    out["clipped_ratio"] = [h.get("completions/clipped_ratio") for h in logs]
    save("grpo", out)
    out["after"] = acc(result.model_name, "short", args.test)
    save("grpo", out)


def stage_distill(args) -> None:
    """Context distillation (KL to the LoRA-off base reading the full prompt, + (1 - alpha)
    cross-entropy) vs sequence-level (SFT on the same verified completions): same rows,
    epochs, batch, learning rate, so the same number of steps; held-out short-prompt accuracy."""
    from assay.train.distill import distill

    rows = verified_rows(args.n)
    out = {
        "n": len(rows),
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "alpha": args.alpha,
        "test_n": args.test,
    }
    out["trivial"] = trivial_baseline(args.test)
    if not args.skip_before:
        out["base_short"] = acc(BASE, "short", args.test)  # the students' starting point
        out["teacher_full"] = acc(BASE, "full", args.test)  # what the teacher sees
        save("distill", out)
    for mode in args.modes.split(","):
        t = time.perf_counter()
        result = distill(
            rows,
            mode=mode,
            model=BASE,
            name=f"bench-{mode}",
            workspace=WS,
            output_dir=f"{WS}/distill-{mode}",
            epochs=args.epochs,
            batch_size=args.batch,
            max_steps=args.steps,
            max_length=160,
            learning_rate=args.lr,
            alpha=args.alpha,
            resume=False,
        )
        out[mode] = {
            "train_s": time.perf_counter() - t,
            "run_id": result.run_id,
            "steps": max(h.get("step", 0) for h in result.log_history),
            "losses": [h["loss"] for h in result.log_history if "loss" in h],
            "train_log": [h for h in result.log_history if "train_runtime" in h],
        }
        save("distill", out)
        out[mode]["short"] = acc(result.model_name, "short", args.test)
        save("distill", out)


def stage_general(args) -> None:
    """MMLU (`--per-subject` questions from each of the 57 subjects) and ARC (`--arc-n` per
    level) for each model: smaller subsets than `assay eval --task general`, for a loaded CPU."""
    from assay.datasets.arc import arc_questions
    from assay.datasets.mmlu import mmlu_questions
    from assay.train.eval import evaluate_choices, load_eval_model
    from assay.train.tasks import ChoiceTask, _rc_context, _rc_continuations

    tasks = [
        ChoiceTask("mmlu", lambda: mmlu_questions(args.per_subject), _rc_context, _rc_continuations)
    ]
    for level in args.arc_levels.split(","):
        if level:
            tasks.append(
                ChoiceTask(
                    f"arc-{level}",
                    lambda lv=level: arc_questions(lv, args.arc_n),
                    _rc_context,
                    _rc_continuations,
                )
            )
    out = {"per_subject": args.per_subject, "arc_n": args.arc_n}
    for model_name in args.models.split(","):
        model, tok = load_eval_model(model_name)
        t = time.perf_counter()
        out[model_name] = [
            {"model": model_name, **evaluate_choices(model, tok, task)} for task in tasks
        ]
        out[model_name + ":s"] = time.perf_counter() - t
        save("general", out)


def throughput_one(impl: str, packing: bool, steps: int, out_dir: str) -> dict:
    """One SFT run, `impl` "plain" (TRL `SFTTrainer` as a user writes it: a `Dataset` of
    prompt / completion messages, `SFTConfig`, a peft `LoraConfig`) or "assay"
    (`assay.train.sft`: store records, data handoff, registry), on the same rows and settings.
    Wall time from building the trainer to the saved adapter, TRL's `train_runtime`, tokens."""
    from transformers import Trainer

    rows = verified_rows(steps * 8)
    train_times: list[tuple[float, float]] = []  # (CPU s, wall s) of Trainer.train
    original_train = Trainer.train

    def timed_train(self, *a, **k):  # the same wrapper for both paths (SFTTrainer.train)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return original_train(self, *a, **k)
        finally:
            train_times.append((time.process_time() - cpu, time.perf_counter() - wall))

    Trainer.train = timed_train
    t0, c0 = time.perf_counter(), time.process_time()
    if impl == "plain":
        from datasets import Dataset
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        from assay.train.runner import load_policy

        model, tok, _ = load_policy(BASE)  # the embedded GGUF converted once (both paths)
        dataset = Dataset.from_list(
            [
                {
                    "prompt": r["prompt"],
                    "completion": [{"role": "assistant", "content": r["completion"]}],
                }
                for r in rows
            ]
        )
        config = SFTConfig(
            output_dir=out_dir,
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=5e-4,
            lr_scheduler_type="cosine",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            disable_tqdm=True,
            max_length=128,
            packing=packing,
            completion_only_loss=True,
            seed=0,  # assay's default: the same shuffle, so the same padding per batch
        )
        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tok,
            peft_config=lora,
        )
        trainer.train()
        trainer.save_model(f"{out_dir}/adapter")
        log = trainer.state.log_history
    else:
        from assay.train.sft import sft

        result = sft(
            rows,
            model=BASE,
            name="bench-tp",
            workspace=WS,
            output_dir=out_dir,
            batch_size=8,
            max_steps=steps,
            packing=packing,
            max_length=128,
            resume=False,
            register=False,
        )
        log = result.log_history
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    Trainer.train = original_train
    tokens = [h["num_tokens"] for h in log if "num_tokens" in h][-1]
    runtime = next(h["train_runtime"] for h in log if "train_runtime" in h)
    train_cpu, train_wall = train_times[-1]
    return {
        "impl": impl,
        "packing": packing,
        "steps": steps,
        "tokens": tokens,
        "wall_s": wall,
        "cpu_s": cpu,
        "train_runtime_s": runtime,
        "train_cpu_s": train_cpu,
        "train_wall_s": train_wall,
        "tok_s_wall": tokens / wall,
        "tok_s_train": tokens / runtime,
        "tok_per_cpu_s": tokens / cpu,
        "tok_per_train_cpu_s": tokens / train_cpu,
        "peak_rss_mb": rss_mb(),
        "load_avg": os.getloadavg(),
    }


def stage_throughput(args) -> None:
    """Plain TRL and assay interleaved (plain, assay, plain, assay ...), packing off / on,
    each run in a fresh child process (so peak RSS is that run's), `--repeats` rounds."""
    import subprocess

    packings = [p == "on" for p in args.packing.split(",")]
    out = {
        "steps": args.steps,
        "batch": 8,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "runs": [],
    }
    if args.side_by_side:
        out["side_by_side"] = True

    def command(impl: str, packing: bool, repeat: int) -> list[str]:
        out_dir = f"{WS}/tp-{impl}-{repeat}-{int(packing)}"
        code = (
            f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            "import train; "
            f"print('RESULT', json.dumps(train.throughput_one({impl!r}, {packing}, "
            f"{args.steps}, {out_dir!r})))"
        )
        return [sys.executable, "-c", code]

    def result(proc, impl: str, packing: bool, repeat: int, stdout: str, stderr: str) -> dict:
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"{impl} packing={packing} failed:\n{stderr[-3000:]}")
        run = {"repeat": repeat, **json.loads(line[0][7:])}
        out["runs"].append(run)
        print(run, flush=True)
        return run

    for repeat in range(args.repeats):
        for packing in packings:
            impls = ("plain", "assay") if repeat % 2 == 0 else ("assay", "plain")
            if args.side_by_side:  # both at once, one core each (swapped every repeat)
                procs = [
                    (
                        impl,
                        subprocess.Popen(
                            ["taskset", "-c", str(core), *command(impl, packing, repeat)],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                        ),
                    )
                    for core, impl in enumerate(impls)
                ]
                for impl, proc in procs:
                    stdout, stderr = proc.communicate()
                    result(proc, impl, packing, repeat, stdout, stderr)
            else:
                for impl in impls:
                    proc = subprocess.run(
                        command(impl, packing, repeat), capture_output=True, text=True
                    )
                    result(proc, impl, packing, repeat, proc.stdout, proc.stderr)
            save("throughput", out)
    for packing in packings:
        for impl in ("plain", "assay"):
            runs = [r for r in out["runs"] if r["impl"] == impl and r["packing"] == packing]
            out[f"{impl}_packing{int(packing)}"] = {
                key: sum(r[key] for r in runs) / len(runs)
                for key in (
                    "tok_s_wall",
                    "tok_s_train",
                    "tok_per_cpu_s",
                    "tok_per_train_cpu_s",
                    "cpu_s",
                    "train_cpu_s",
                )
            } | {"peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
        plain, assay_ = out[f"plain_packing{int(packing)}"], out[f"assay_packing{int(packing)}"]
        out[f"pairs_packing{int(packing)}"] = pair_ratios(out["runs"], packing)
        out[f"overhead_packing{int(packing)}"] = {  # assay's extra time per token over plain
            key: plain[key] / assay_[key] - 1
            for key in ("tok_s_wall", "tok_s_train", "tok_per_cpu_s", "tok_per_train_cpu_s")
        }
    save("throughput", out)


def pair_ratios(runs: list[dict], packing: bool) -> dict:
    """assay / plain CPU seconds of `Trainer.train` per repeat (a pair ran back to back or,
    side by side, at the same time), their mean, its standard error and a 95% interval."""
    import statistics

    ratios = []
    for repeat in sorted({r["repeat"] for r in runs}):
        pair = {r["impl"]: r for r in runs if r["repeat"] == repeat and r["packing"] == packing}
        if len(pair) == 2:
            ratios.append(pair["assay"]["train_cpu_s"] / pair["plain"]["train_cpu_s"])
    if len(ratios) < 2:
        return {"ratios": ratios}
    mean = statistics.fmean(ratios)
    se = statistics.stdev(ratios) / len(ratios) ** 0.5
    # two-sided 95% t quantiles for n-1 degrees of freedom (1..30), then the normal one
    t95 = [12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16,
           2.14, 2.13, 2.12, 2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06,
           2.05, 2.05, 2.05, 2.04]  # fmt: skip
    t = t95[len(ratios) - 2] if len(ratios) - 1 <= len(t95) else 1.96
    return {
        "ratios": ratios,
        "mean": mean,
        "median": statistics.median(ratios),
        "se": se,
        "ci95": [mean - t * se, mean + t * se],
    }


def stage_report(args) -> None:
    """The training report (Markdown + HTML + PNG) from the stages' JSON and the store."""
    from assay.train.report import write_report

    def load(stage):
        path = RESULTS / f"train_{stage}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    sft_, grpo_, dist = load("sft"), load("grpo"), load("distill")
    results, labels, runs = [], {BASE: "base"}, []
    if "base_short" in sft_:
        results.append(sft_["base_short"])
    if "student_short" in sft_:
        results.append(sft_["student_short"])
        labels[sft_["model"]] = "student (SFT)"
        runs.append(sft_["run_id"])
    if "after" in grpo_:
        results.append(grpo_["after"])
        labels[grpo_["after"]["model"]] = "student (SFT+GRPO)"
    for mode in ("context", "sequence"):
        if mode in dist:
            results.append(dist[mode]["short"])
            labels[dist[mode]["short"]["model"]] = f"{mode} distillation"
    general = load("general")
    for value in general.values():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            results.extend(value)
    write_report(
        RESULTS / "train_report",
        "Training report: SmolLM2-135M on arithmetic",
        results,
        runs,
        labels,
        workspace=WS,
        notes="Measured on a shared 2-core CPU (load average ~20).",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "stage", choices=["sft", "grpo", "distill", "general", "throughput", "report"]
    )
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="max steps (sft, distill: -1 = by epochs; others: 8)",
    )
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--packing", default="off,on", help="throughput: off, on or off,on")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="throughput: run each pair at the same time, one core each (taskset)",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="distill: KL weight")
    parser.add_argument("--modes", default="context,sequence", help="distill modes to run")
    parser.add_argument("--grpo-lr", type=float, default=2e-5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--per-subject", type=int, default=1)
    parser.add_argument("--arc-n", type=int, default=40)
    parser.add_argument("--arc-levels", default="easy,challenge")
    parser.add_argument("--models", default=BASE)
    parser.add_argument(
        "--skip-before",
        action="store_true",
        help="sft, grpo, distill: skip the eval before training",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.steps is None:
        args.steps = -1 if args.stage in ("sft", "distill") else 8
    {
        "sft": stage_sft,
        "grpo": stage_grpo,
        "distill": stage_distill,
        "general": stage_general,
        "throughput": stage_throughput,
        "report": stage_report,
    }[args.stage](args)


if __name__ == "__main__":
    main()
