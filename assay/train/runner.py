"""What every trainer shares: settings, model loading, TRL arguments for a CPU, the run's
lifecycle in the store (config, rows, metrics per step, adapter), resume and registration.

A method file (sft.py, dpo.py, ...) turns its data into TRL's format, builds its TRL trainer
in a `build(callbacks)` function and hands it to `execute`, which records the run, resumes
from the newest checkpoint in the output directory, trains, saves the adapter (or the full
model) and registers it so `local/<base>+<name>` and `assay serve` can use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.models.registry import EMBEDDED_ALIAS
from assay.train import store as train_store
from assay.train.lora import LoraSettings


class TrainingSignalError(AssayError):
    """A run that would learn nothing: the message names the cause and the setting to change."""


@dataclass
class TrainSettings:
    """Options every trainer takes (the CLI flags have the same names).

    `model`: a registry name (`smollm2-135m`, `smollm2-135m+sft-1`, a model directory);
    continuing from an adapter trains that adapter further. `full`: full fine-tuning instead
    of LoRA. `name`: the registered name (`<base>+<name>`; default `<method>-<run id>`).
    """

    model: str = EMBEDDED_ALIAS
    name: str | None = None
    output_dir: str | None = None
    workspace: str = ".assay"
    epochs: float = 2.0
    max_steps: int = -1
    learning_rate: float = 5e-4
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0.0  # a float < 1 is a share of the steps
    full: bool = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval_fraction: float = 0.0
    early_stopping_patience: int = 0
    seed: int = 0
    save_steps: int = 50
    logging_steps: int = 1
    resume: bool = True
    register: bool = True
    # > 0: print "<name>: step k/N, loss x, elapsed, ~left" at most this often instead of
    # TRL's log line per step (the intern job's trainings, which run side by side)
    progress_every_s: float = 0.0

    def config(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What a run produced: its id, the saved adapter / model and its registered name."""

    run_id: str
    method: str
    output_dir: Path
    adapter_dir: Path
    model_name: str | None
    log_history: list[dict[str, Any]]


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_policy(name: str) -> tuple[Any, Any, Any]:
    """(model, tokenizer, spec) for training. An adapter in the name is loaded trainable."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assay.models.registry import materialize, resolve_model

    spec = resolve_model(name)
    directory = materialize(spec)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if has_cuda() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    if spec.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.adapter, is_trainable=True)
    return model, tokenizer, spec


def peft_config_for(settings: TrainSettings, model: Any) -> Any:
    """The LoRA config, or None for full fine-tuning or a model that already has an adapter."""
    if settings.full or hasattr(model, "peft_config"):
        return None
    return settings.lora.peft_config()


def trl_args(settings: TrainSettings, output_dir: Path, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for any TRL config, with CPU-safe defaults (no bf16, no gradient
    checkpointing: TRL turns both on, and on a CPU they cost time and fail respectively)."""
    cuda = has_cuda()
    args: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_steps,
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        report_to="none",
        bf16=cuda,
        gradient_checkpointing=False,
        use_cpu=not cuda,
        disable_tqdm=True,
    )
    if has_eval:
        args.update(eval_strategy="steps", eval_steps=settings.save_steps)
        if settings.early_stopping_patience > 0:
            args.update(
                load_best_model_at_end=True,
                metric_for_best_model="eval_loss",
                greater_is_better=False,
            )
    return args


def early_stopping(settings: TrainSettings, has_eval: bool) -> list[Any]:
    from transformers import EarlyStoppingCallback

    if has_eval and settings.early_stopping_patience > 0:
        return [EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience)]
    return []


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StoreCallback(_callback_base()):
    """Writes every logged metric to `train_metrics`, in groups: the store is opened at most
    once every `every_s` seconds (an open costs 30-130 ms of CPU, 1-3% of a CPU training
    step when done at every step) and at the end of training, so `assay show` sees a
    running training's metrics at most that late."""

    def __init__(self, workspace: str, run_id: str, every_s: float = 30.0) -> None:
        self.workspace, self.run_id, self.every_s = workspace, run_id, every_s
        self.pending: list[tuple[int, dict[str, Any]]] = []
        self.written = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs:
            self.pending.append((state.global_step, dict(logs)))
        if time.monotonic() - self.written >= self.every_s:
            self.flush()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.flush()

    def flush(self) -> None:
        from assay.curate.store import RunStore

        self.written = time.monotonic()
        if not self.pending:
            return
        with RunStore(self.workspace) as store:
            for step, logs in self.pending:
                train_store.log_metrics(store, self.run_id, step, logs)
        self.pending = []


class StepProgress(_callback_base()):
    """One line per `every_s` seconds: `<label>: step k/N, loss x, elapsed, ~left`."""

    def __init__(self, label: str, every_s: float, write: Callable[[str], None] = print) -> None:
        self.label, self.every_s, self.write = label, every_s, write
        self.started = self.shown = 0.0
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self.started = self.shown = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        now = time.monotonic()
        last = state.global_step >= state.max_steps
        if now - self.shown < self.every_s and not last:
            return
        self.shown = now
        elapsed = now - self.started
        left = elapsed / max(state.global_step, 1) * (state.max_steps - state.global_step)
        loss = f", loss {self.loss:.3f}" if self.loss is not None else ""
        self.write(
            f"      {self.label}: step {state.global_step}/{state.max_steps}{loss}, "
            f"{elapsed:.0f} s" + ("" if last else f", ~{left:.0f} s left")
        )


def progress_callbacks(settings: TrainSettings, method: str) -> list[Any]:
    if settings.progress_every_s <= 0:
        return []
    label = settings.name or method
    return [StepProgress(label, settings.progress_every_s, lambda line: print(line, flush=True))]


def drop_log_printer(trainer: Any) -> None:
    """Without TRL's per-step dict of metrics (StepProgress says what a reader needs)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def output_dir_for(settings: TrainSettings, method: str) -> Path:
    if settings.output_dir:
        return Path(settings.output_dir)
    return Path(settings.workspace) / "train" / (settings.name or method)


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def execute(
    method: str,
    settings: TrainSettings,
    build: Callable[[list[Any], Path], Any],
    splits: dict[str, list[str]],
    extra_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Record, (resume,) train, save and register one run; `build(callbacks, output_dir)`
    returns the TRL trainer. A failure marks the run failed with its message and re-raises."""
    from assay.curate.store import RunStore
    from assay.models.registry import register_adapter, register_model, resolve_model

    output_dir = output_dir_for(settings, method)
    config = {**settings.config(), **(extra_config or {}), "method": method}
    with RunStore(settings.workspace) as store:
        run_id = train_store.start_run(
            store, method, settings.model, config, str(output_dir), splits
        )
    name = settings.name or f"{method}-{run_id}"
    recorder = StoreCallback(settings.workspace, run_id)
    try:
        progress = progress_callbacks(settings, method)
        trainer = build([recorder, *progress], output_dir)
        if progress:
            drop_log_printer(trainer)
        checkpoint = last_checkpoint(output_dir) if settings.resume else None
        trainer.train(resume_from_checkpoint=checkpoint)
        final = output_dir / ("model" if settings.full else "adapter")
        trainer.save_model(str(final))
        trainer.processing_class.save_pretrained(str(final))
        registered = None
        if settings.register:
            if settings.full:
                register_model(name, final)
                registered = name
            else:
                base = resolve_model(settings.model).base_name
                registered = register_adapter(name, final, base=base)
    except BaseException as exc:
        recorder.flush()  # the metrics of the steps that ran, for `assay show`
        with RunStore(settings.workspace) as store:
            train_store.finish_run(store, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    with RunStore(settings.workspace) as store:
        train_store.finish_run(store, run_id, "done", str(final), registered)
    return TrainResult(run_id, method, output_dir, final, registered, trainer.state.log_history)


def quiet_logs() -> None:
    """Keep transformers' per-step warnings out of CLI output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
