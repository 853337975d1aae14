"""Distillation: knowledge from a teacher (or from a long prompt) into a small student.

Modes (`mode=`):
- `sequence` (default): SFT on curated teacher outputs (`prompt` / `completion` or
  `messages` rows): the teacher's text is the label.
- `token`: token-level knowledge distillation, teacher and student sharing a tokenizer. Both
  read the same prompt + completion; the loss is `alpha * T^2 * KL(teacher_T || student_T)`
  over the completion tokens (distributions softened by temperature T) plus
  `(1 - alpha) * cross-entropy` on the completion tokens (the hard labels).
- `context`: context distillation, the intern case. The teacher is the student's own base
  model (the LoRA adapter switched off: one model on disk and in memory) reading the long
  prompt (`teacher_prompt` column: handbook, schema, worked examples); the student reads only
  the short `prompt`. The KL is taken over the same completion tokens, so what the long
  prompt told the teacher moves into the adapter's weights.
- `on-policy`: the student samples, the teacher scores each token (TRL's
  `DistillationTrainer`, prompt-only rows, `beta` 0 = forward KL, 1 = reverse KL).

Why our own short loop for `token` / `context`: TRL's GKD and distillation trainers feed the
teacher the student's prompt; context distillation needs a different teacher input over the
same completion, and the loss is twenty lines.

Input columns: `prompt` (messages or string), `completion` (string or assistant messages),
`teacher_prompt` (context mode). Example:
    distill(rows, mode="context", model="smollm2-135m", name="intern", temperature=1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.train import data
from assay.train.runner import (
    TrainResult,
    TrainSettings,
    execute,
    load_policy,
    peft_config_for,
    trl_args,
)

MODES = ("sequence", "token", "context", "on-policy")


@dataclass
class DistillSettings(TrainSettings):
    mode: str = "sequence"
    teacher: str | None = None
    temperature: float = 1.0
    alpha: float = 0.5  # weight of the KL term; 1 - alpha on the hard labels
    beta: float = 0.0  # on-policy: 0 forward KL, 0.5 JSD, 1 reverse KL
    max_completion_length: int = 32  # on-policy sampling budget
    packing: bool = False


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """Mean over tokens of T^2 * KL(softmax(t/T) || softmax(s/T)); inputs (tokens, vocab)."""
    import torch.nn.functional as F

    t = temperature
    teacher_logp = F.log_softmax(teacher_logits.float() / t, dim=-1)
    student_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return (t * t) * kl.mean()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "".join(str(m.get("content") or "") for m in value if m.get("role") == "assistant")


def _prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    messages = [data.clean_message(dict(m), True) for m in prompt]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pairs(rows: list[dict[str, Any]], tokenizer: Any, mode: str, max_length: int):
    """Student and teacher token ids sharing the same completion ids (+ eos)."""
    out = []
    for k, row in enumerate(rows):
        if row.get("prompt") is None or row.get("completion") is None:
            raise AssayError(f"row {k} (id {row.get('id', '?')}): needs `prompt` and `completion`")
        if mode == "context" and row.get("teacher_prompt") is None:
            raise AssayError(
                f"row {k} (id {row.get('id', '?')}): context mode needs `teacher_prompt`"
            )
        completion = tokenizer(
            _text(row["completion"]) + tokenizer.eos_token, add_special_tokens=False
        )
        comp = completion["input_ids"]
        student = _prompt_ids(tokenizer, row["prompt"])
        teacher = _prompt_ids(tokenizer, row["teacher_prompt"]) if mode == "context" else student
        room = max_length - max(len(student), len(teacher))
        if room <= 0:
            raise AssayError(
                f"row {k}: the prompt ({max(len(student), len(teacher))} tokens) fills "
                f"max_length={max_length}; raise --max-length"
            )
        comp = comp[:room]
        out.append(
            {
                "student": student + comp,
                "teacher": teacher + comp,
                "s0": len(student),
                "t0": len(teacher),
                "n": len(comp),
            }
        )
    return out


def collate(pad_id: int):
    import torch

    def pad(seqs):
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        return ids, mask

    def fn(features):
        s_ids, s_mask = pad([f["student"] for f in features])
        t_ids, t_mask = pad([f["teacher"] for f in features])
        spans = torch.tensor([[f["s0"], f["t0"], f["n"]] for f in features])
        return {
            "input_ids": s_ids,
            "attention_mask": s_mask,
            "teacher_input_ids": t_ids,
            "teacher_attention_mask": t_mask,
            "spans": spans,
        }

    return fn


def completion_logits(logits: Any, starts: list[int], lengths: list[int]) -> Any:
    """Rows of `logits` that predict each row's completion tokens, stacked (tokens, vocab)."""
    import torch

    return torch.cat(
        [logits[i, s - 1 : s - 1 + n] for i, (s, n) in enumerate(zip(starts, lengths, strict=True))]
    )


def _trainer_class():
    import contextlib

    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class KDTrainer(Trainer):
        """Trainer whose loss mixes KL to a teacher with cross-entropy on the completion."""

        def __init__(self, *args, teacher=None, temperature=1.0, alpha=0.5, **kwargs):
            super().__init__(*args, **kwargs)
            self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            spans = inputs["spans"].tolist()
            s0, t0, n = [s[0] for s in spans], [s[1] for s in spans], [s[2] for s in spans]
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            student = completion_logits(out.logits, s0, n)
            off = model.disable_adapter() if self.teacher is None else contextlib.nullcontext()
            teacher_model = model if self.teacher is None else self.teacher
            with torch.no_grad(), off:
                t_out = teacher_model(
                    input_ids=inputs["teacher_input_ids"],
                    attention_mask=inputs["teacher_attention_mask"],
                )
            teacher = completion_logits(t_out.logits, t0, n)
            labels = torch.cat(
                [
                    inputs["input_ids"][i, s : s + k]
                    for i, (s, k) in enumerate(zip(s0, n, strict=True))
                ]
            )
            kl = kd_loss(student, teacher, self.temperature)
            ce = F.cross_entropy(student.float(), labels)
            loss = self.alpha * kl + (1 - self.alpha) * ce
            return (loss, out) if return_outputs else loss

    return KDTrainer


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, teacher: str) -> None:
    probe = "What is 12+7? <|im_end|> SELECT x FROM t;"
    if (
        len(student_tok) != len(teacher_tok)
        or student_tok(probe)["input_ids"] != teacher_tok(probe)["input_ids"]
    ):
        raise AssayError(
            f"token-level distillation needs teacher and student to share a tokenizer; "
            f"{teacher!r} tokenizes differently. Use --mode sequence (SFT on its outputs)."
        )


def distill(dataset: str | Path | list[dict[str, Any]], **options: Any) -> TrainResult:
    """Distil into `options["model"]`; options are `DistillSettings` fields."""
    settings = DistillSettings(**options)
    if settings.mode not in MODES:
        raise AssayError(f"distill mode must be one of {', '.join(MODES)}; got {settings.mode!r}")
    rows = data.load_rows(dataset)
    ids = data.row_ids(rows)
    if settings.mode == "sequence":
        from assay.train.sft import SFTSettings, build_sft_trainer

        sft_settings = SFTSettings(
            **{k: v for k, v in options.items() if k in SFTSettings.__dataclass_fields__}
        )
        train_rows, train_ids, eval_rows, eval_ids = data.split_eval(
            rows, ids, settings.eval_fraction, settings.seed
        )

        def build_seq(callbacks, output_dir):
            return build_sft_trainer(sft_settings, train_rows, eval_rows, callbacks, output_dir)

        return execute(
            "distill",
            sft_settings,
            build_seq,
            {"train": train_ids, "eval": eval_ids},
            {"mode": "sequence", "teacher": settings.teacher},
        )
    if settings.mode == "on-policy":
        return _on_policy(settings, rows, ids)
    if settings.mode == "token" and not settings.teacher:
        raise AssayError("token-level distillation needs --teacher (a model sharing the tokenizer)")
    if settings.mode == "context" and settings.full:
        raise AssayError("context distillation uses the LoRA-off base as teacher; drop --full")

    def build(callbacks, output_dir):
        from peft import get_peft_model
        from transformers import TrainingArguments

        model, tokenizer, _ = load_policy(settings.model)
        teacher = None
        if settings.mode == "token":
            from assay.train.eval import load_eval_model

            teacher, teacher_tok = load_eval_model(settings.teacher)
            check_same_tokenizer(tokenizer, teacher_tok, settings.teacher)
            teacher.eval().requires_grad_(False)
        config = peft_config_for(settings, model)
        if config is not None:
            model = get_peft_model(model, config)
        args = TrainingArguments(
            **trl_args(settings, output_dir, False), remove_unused_columns=False
        )
        return _trainer_class()(
            model=model,
            args=args,
            train_dataset=encode_pairs(rows, tokenizer, settings.mode, settings.max_length),
            data_collator=collate(tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=callbacks,
            teacher=teacher,
            temperature=settings.temperature,
            alpha=settings.alpha,
        )

    return execute("distill", settings, build, {"train": ids}, {"mode": settings.mode})


def _on_policy(
    settings: DistillSettings, rows: list[dict[str, Any]], ids: list[str]
) -> TrainResult:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    from assay.train.eval import load_eval_model

    if not settings.teacher:
        raise AssayError("on-policy distillation needs --teacher")
    prompts = []
    for k, row in enumerate(rows):
        prompt = row.get("prompt")
        if prompt is None:
            raise AssayError(f"row {k} (id {row.get('id', '?')}): on-policy needs `prompt`")
        if isinstance(prompt, list):
            prompt = [data.clean_message(dict(m), True) for m in prompt]
        prompts.append({"prompt": prompt})

    def build(callbacks, output_dir):
        model, tokenizer, _ = load_policy(settings.model)
        teacher, teacher_tok = load_eval_model(settings.teacher)
        check_same_tokenizer(tokenizer, teacher_tok, settings.teacher)
        config = DistillationConfig(
            **trl_args(settings, output_dir, False),
            beta=settings.beta,
            temperature=settings.temperature,
            max_completion_length=settings.max_completion_length,
        )
        return DistillationTrainer(
            model=model,
            teacher_model=teacher,
            args=config,
            train_dataset=Dataset.from_list(prompts),
            processing_class=tokenizer,
            peft_config=peft_config_for(settings, model),
            callbacks=callbacks,
        )

    return execute("distill", settings, build, {"train": ids}, {"mode": "on-policy"})
