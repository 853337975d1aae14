"""Training benchmarks on the embedded model (SmolLM2-135M) on this CPU.

Stages (each writes bench/results/train_<stage>.json; `summary` writes train.md):
- `throughput`: SFT tokens/s, plain TRL `SFTTrainer` vs `assay.train.sft`, packing off / on,
  interleaved in one process (same data, same settings), and peak RSS.
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


def acc(model: str, style: str, limit: int) -> dict:
    from assay.train.eval import evaluate

    return evaluate([model], ["arithmetic"], style, limit=limit, workspace=WS)[0]


def stage_sft(args) -> None:
    from assay.train.sft import sft

    out = {
        "n": args.n,
        "epochs": args.epochs,
        "max_steps": args.steps,
        "lr": args.lr,
        "batch": args.batch,
        "test_n": args.test,
    }
    out["base_short"] = acc(BASE, "short", args.test)
    save("sft", out)
    rows = verified_rows(args.n)
    t = time.perf_counter()
    result = sft(
        rows,
        model=BASE,
        name="bench-sft",
        workspace=WS,
        output_dir=f"{WS}/sft",
        epochs=args.epochs,
        max_steps=args.steps,
        batch_size=args.batch,
        max_length=128,
        learning_rate=args.lr,
        resume=False,
    )
    out["train_s"] = time.perf_counter() - t
    out["run_id"], out["model"] = result.run_id, result.model_name
    out["losses"] = [h["loss"] for h in result.log_history if "loss" in h]
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
    from assay.train.distill import distill

    rows = verified_rows(args.n)
    out = {"n": args.n, "epochs": args.epochs, "test_n": args.test}
    for mode in ("context", "sequence"):
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
            resume=False,
        )
        out[mode] = {
            "train_s": time.perf_counter() - t,
            "run_id": result.run_id,
            "short": acc(result.model_name, "short", args.test),
        }
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


def stage_throughput(args) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from assay.train import data
    from assay.train.runner import load_policy, trl_args
    from assay.train.sft import SFTSettings, sft

    rows = verified_rows(args.steps * 8)
    out = {"steps": args.steps, "batch": 8, "runs": []}
    for repeat in range(args.repeats):
        for packing in (False, True):
            # plain TRL with the same settings, on the same converted model
            settings = SFTSettings(
                model=BASE,
                batch_size=8,
                max_steps=args.steps,
                packing=packing,
                max_length=128,
                output_dir=f"{WS}/plain",
            )
            model, tok, _ = load_policy(BASE)
            trainer = SFTTrainer(
                model=model,
                processing_class=tok,
                args=SFTConfig(
                    **{**trl_args(settings, Path(f"{WS}/plain"), False), "save_strategy": "no"},
                    max_length=128,
                    packing=packing,
                    completion_only_loss=True,
                ),
                train_dataset=Dataset.from_list(data.sft_rows(rows, tok)),
                peft_config=settings.lora.peft_config(),
            )
            t = time.perf_counter()
            trainer.train()
            plain_s = time.perf_counter() - t
            tokens = trainer.state.log_history[-2].get("num_tokens", 0)
            t = time.perf_counter()
            result = sft(
                rows,
                model=BASE,
                name="bench-tp",
                workspace=WS,
                output_dir=f"{WS}/tp-{repeat}-{packing}",
                batch_size=8,
                max_steps=args.steps,
                packing=packing,
                max_length=128,
                resume=False,
                register=False,
            )
            assay_s = time.perf_counter() - t
            a_tokens = [h for h in result.log_history if "num_tokens" in h][-1]["num_tokens"]
            out["runs"].append(
                {
                    "repeat": repeat,
                    "packing": packing,
                    "plain_s": plain_s,
                    "plain_tokens": tokens,
                    "plain_tok_s": tokens / plain_s,
                    "assay_s": assay_s,
                    "assay_tokens": a_tokens,
                    "assay_tok_s": a_tokens / assay_s,
                }
            )
            print(out["runs"][-1], flush=True)
    save("throughput", out)


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
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grpo-lr", type=float, default=2e-5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--per-subject", type=int, default=1)
    parser.add_argument("--arc-n", type=int, default=40)
    parser.add_argument("--arc-levels", default="easy,challenge")
    parser.add_argument("--models", default=BASE)
    parser.add_argument("--skip-before", action="store_true", help="grpo: reuse the SFT eval")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
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
