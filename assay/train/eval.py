"""`assay eval`: accuracy of one or more local models on tasks, side by side, stored.

Generation tasks (arithmetic, and any registered `GenerationTask`): greedy answers to the
task's held-out split with the chosen prompt style, judged by the task's verifier; prompt
and completion tokens per query and seconds per query (batched) are reported.
Multiple-choice tasks (the general set: MMLU, ARC-Easy, ARC-Challenge): each choice scored by
its log-likelihood after the question, normalised per character (the "RC" form, which
separates small models from chance better than scoring answer letters), on fixed, seeded
subsets (228 MMLU questions = 4 per subject, 200 per ARC level); the standard error
sqrt(p(1-p)/n) is reported with each accuracy.

An adapter name (`base+name`) whose LoRA weights are all zero, or that loads without its
adapter, stops with an error instead of silently answering with the base model.

Example:
    assay eval --model smollm2-135m --model smollm2-135m+adder --task arithmetic --task general
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from assay.train.lora import lora_is_trained
from assay.train.runner import TrainingSignalError
from assay.train.tasks import GENERAL_SET, ChoiceTask, GenerationTask, get_task


def load_eval_model(name: str) -> tuple[Any, Any]:
    """(model, tokenizer); refuses an adapter that would leave the base model's answers."""
    from assay.models.registry import load_model, resolve_model

    spec = resolve_model(name)
    model, tokenizer = load_model(spec, device="cuda" if _cuda() else "cpu")
    if spec.adapter is not None:
        if not hasattr(model, "peft_config"):
            raise TrainingSignalError(f"{name}: the adapter {spec.adapter} did not load")
        if not lora_is_trained(model):
            raise TrainingSignalError(
                f"{name}: every LoRA B matrix in {spec.adapter} is zero, so the model would "
                "answer exactly like the base model; the training run learned nothing "
                "(raise --learning-rate or --epochs, check its loss in `assay show`)"
            )
    return model, tokenizer


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def generate(
    model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 32
) -> tuple[list[str], list[int], list[int]]:
    """Greedy completions (texts, prompt tokens, completion tokens), left-padded batches."""
    import torch

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    texts, prompt_tokens, completion_tokens = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos
            )
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        for ids, mask in zip(new, batch["attention_mask"].tolist(), strict=True):
            ids = ids[: ids.index(eos)] if eos in ids else ids
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            prompt_tokens.append(int(sum(mask)))
            completion_tokens.append(len(ids))
    return texts, prompt_tokens, completion_tokens


def evaluate_generation(
    model: Any,
    tokenizer: Any,
    task: GenerationTask,
    style: str = "full",
    limit: int | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    rows = task.rows("test")[:limit] if limit else task.rows("test")
    start = time.perf_counter()
    texts, p_tok, c_tok = generate(
        model, tokenizer, [task.prompt(r, style) for r in rows], task.max_new_tokens, batch_size
    )
    seconds = time.perf_counter() - start
    correct = [
        task.verifier.check(t, r[task.gold_column], r).correct
        for t, r in zip(texts, rows, strict=True)
    ]
    return _summary(task.name, style, correct, p_tok, c_tok, seconds)


def choice_scores(
    model: Any, tokenizer: Any, context: str, continuations: list[str]
) -> list[float]:
    """Log-likelihood of each continuation after `context`, divided by its length in chars.

    The context runs once and its KV cache is shared by the continuations (the choices of a
    multiple-choice question share their question): an MMLU question's 4 choices cost one
    pass over its ~46-token question and 4 short ones, not 4 passes over question + answer.
    """
    import torch

    from assay.models.batch_generate import cache_argument

    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    conts = [tokenizer(c, add_special_tokens=False)["input_ids"] or [] for c in continuations]
    width = max(len(c) for c in conts)
    if not ctx or width == 0:
        return _choice_scores_whole(model, tokenizer, ctx, conts, continuations)
    pad = tokenizer.pad_token_id or 0
    device = next(model.parameters()).device
    ids = torch.tensor([c + [pad] * (width - len(c)) for c in conts], device=device)
    mask = torch.tensor([[1] * len(ctx) + [1] * len(c) + [0] * (width - len(c)) for c in conts])
    with torch.no_grad():
        first = model(input_ids=torch.tensor([ctx], device=device), use_cache=True)
        after_context = torch.log_softmax(first.logits[0, -1].float(), dim=-1).cpu()
        cache = first.past_key_values
        cache.batch_repeat_interleave(len(conts))
        rest = model(
            input_ids=ids, attention_mask=mask.to(device), **{cache_argument(model): cache}
        )
        logprobs = torch.log_softmax(rest.logits[:, :-1].float(), dim=-1).cpu()
    scores = []
    for k, cont in enumerate(conts):
        if not cont:
            scores.append(0.0)
            continue
        total = float(after_context[cont[0]])
        total += sum(float(logprobs[k, j - 1, cont[j]]) for j in range(1, len(cont)))
        scores.append(total / max(1, len(continuations[k])))
    return scores


def _choice_scores_whole(
    model: Any, tokenizer: Any, ctx: list[int], conts: list[list[int]], continuations: list[str]
) -> list[float]:
    """`choice_scores` without a shared context (an empty context or empty choices)."""
    import torch

    seqs = [ctx + c for c in conts]
    width = max(len(s) for s in seqs)
    if width < 2:
        return [0.0] * len(conts)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).cpu()
    scores = []
    for k in range(len(conts)):
        start = max(len(ctx), 1)  # the first token has no prediction to score
        total = sum(float(logprobs[k, p - 1, seqs[k][p]]) for p in range(start, len(seqs[k])))
        scores.append(total / max(1, len(continuations[k])))
    return scores


def evaluate_choices(
    model: Any, tokenizer: Any, task: ChoiceTask, limit: int | None = None
) -> dict[str, Any]:
    rows = task.rows()[:limit] if limit else task.rows()
    start = time.perf_counter()
    correct, p_tok = [], []
    for row in rows:
        context = task.context(row)
        scores = choice_scores(model, tokenizer, context, task.continuations(row))
        correct.append(max(range(len(scores)), key=scores.__getitem__) == row["gold"])
        p_tok.append(len(tokenizer(context, add_special_tokens=False)["input_ids"]))
    seconds = time.perf_counter() - start
    return _summary(task.name, "rc", correct, p_tok, [0] * len(rows), seconds)


def _summary(
    task: str, style: str, correct: list[bool], p_tok: list[int], c_tok: list[int], seconds: float
) -> dict[str, Any]:
    n = len(correct)
    p = sum(correct) / n if n else 0.0
    return {
        "task": task,
        "prompt_style": style,
        "n": n,
        "accuracy": p,
        "stderr": math.sqrt(p * (1 - p) / n) if n else 0.0,
        "prompt_tokens": sum(p_tok) / n if n else 0.0,
        "completion_tokens": sum(c_tok) / n if n else 0.0,
        "latency_s": seconds / n if n else 0.0,
    }


def expand_tasks(tasks: list[str]) -> list[str]:
    out: list[str] = []
    for name in tasks:
        for t in GENERAL_SET if name == "general" else [name]:
            if t not in out:
                out.append(t)
    return out


def evaluate(
    models: list[str],
    tasks: list[str],
    prompt_style: str = "full",
    limit: int | None = None,
    batch_size: int = 32,
    workspace: str | None = ".assay",
) -> list[dict[str, Any]]:
    """Every model on every task; one result dict per (model, task), stored when
    `workspace` is set (table `eval_results`, one `eval_id` per call)."""
    results = []
    names = expand_tasks(tasks)
    for name in models:
        model, tokenizer = load_eval_model(name)
        for task_name in names:
            task = get_task(task_name)
            if isinstance(task, ChoiceTask):
                result = evaluate_choices(model, tokenizer, task, limit)
            else:
                result = evaluate_generation(
                    model, tokenizer, task, prompt_style, limit, batch_size
                )
            results.append({"model": name, **result})
        del model
    if workspace:
        from assay.curate.store import RunStore
        from assay.train.store import save_eval

        with RunStore(workspace) as store:
            save_eval(store, "eval-" + secrets.token_hex(4), results)
    return results


def results_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per task, one column per model (accuracy ± s.e.), then
    prompt tokens per query and seconds per query."""
    models = list(dict.fromkeys(r["model"] for r in results))
    tasks = list(dict.fromkeys((r["task"], r["prompt_style"]) for r in results))
    cell = {(r["model"], r["task"], r["prompt_style"]): r for r in results}
    lines = [
        "| task | n | " + " | ".join(models) + " | prompt tok/query | s/query |",
        "|---|---|" + "---|" * len(models) + "---|---|",
    ]
    for task, style in tasks:
        got = [cell.get((m, task, style)) for m in models]
        first = next(g for g in got if g)
        accs = " | ".join(
            f"{100 * g['accuracy']:.1f} ± {100 * g['stderr']:.1f}" if g else "-" for g in got
        )
        secs = " / ".join(f"{g['latency_s']:.3f}" for g in got if g)
        toks = " / ".join(f"{g['prompt_tokens']:.0f}" for g in got if g)
        lines.append(f"| {task} ({style}) | {first['n']} | {accs} | {toks} | {secs} |")
    return "\n".join(lines)
