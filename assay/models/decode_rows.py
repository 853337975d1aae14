"""What a row of a generation batch asks for and what it produced, and the per-step token
choice both decode loops share (grammar mask, greedy or sampled; stop and length checks)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from assay.models.constrained import GrammarState, mask_logits


@dataclass
class GenerationItem:
    """One row to generate. `temperature <= 0` means greedy."""

    prompt_ids: list[int]
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adapter: str | None = None
    grammar: GrammarState | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens


class GenerationCancelled(RuntimeError):
    """The batch was stopped between decoding steps (`LocalBackend.close(cancel=True)`)."""


def stop_if_cancelled(cancel: threading.Event | None) -> None:
    """Raise `GenerationCancelled` once `cancel` is set (checked before each decoding step)."""
    if cancel is not None and cancel.is_set():
        raise GenerationCancelled("generation cancelled: the local backend is closing")


@dataclass
class GenerationResult:
    """What one row produced: tokens (without the stop token), text, and why it ended."""

    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"


class DecodeRow:
    """Decode-time state of one row."""

    def __init__(self, item: GenerationItem, device: torch.device) -> None:
        self.item = item
        self.result = GenerationResult()
        self.generator: torch.Generator | None = None
        if item.temperature > 0:
            self.generator = torch.Generator(device=device)
            if item.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(int(item.seed) % (2**63))


def pick_tokens(logits: torch.Tensor, rows: list[DecodeRow]) -> torch.Tensor:
    """One next token per row: grammar mask, then greedy or temperature / top-k / top-p."""
    mask_logits(logits, [row.item.grammar for row in rows])
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, row in enumerate(rows) if row.generator is not None]
    if not sampled:
        return tokens
    sub = logits[sampled]
    temps = torch.tensor([rows[i].item.temperature for i in sampled], device=logits.device)
    sub = sub / temps[:, None]
    top_ks = [rows[i].item.top_k for i in sampled]
    if any(k > 0 for k in top_ks):
        for j, k in enumerate(top_ks):
            if 0 < k < sub.shape[-1]:
                kth = torch.topk(sub[j], k).values[-1]
                sub[j] = sub[j].masked_fill(sub[j] < kth, float("-inf"))
    top_ps = torch.tensor([rows[i].item.top_p for i in sampled], device=logits.device)
    if bool((top_ps < 1.0).any()):
        sorted_logits, order = sub.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_ps[:, None]
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        sub = sub.masked_fill(drop, float("-inf"))
    probs = sub.softmax(dim=-1)
    for j, i in enumerate(sampled):
        tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    return tokens


def advance(row: DecodeRow, token: int, tokenizer: Any, eos_token_ids: set[int]) -> bool:
    """Append one token to the row; True when the row has finished."""
    item, result = row.item, row.result
    if item.grammar is not None:
        if not item.grammar.accept(token):
            result.finish_reason = "stop"
            return True
        if item.grammar.finished:
            result.finish_reason = "stop"
            return True
    if token in eos_token_ids and item.grammar is None and not item.ignore_eos:
        result.finish_reason = "stop"
        return True
    result.token_ids.append(token)
    if item.stop:
        text = tokenizer.decode(result.token_ids, skip_special_tokens=True)
        if any(stop in text for stop in item.stop):
            result.finish_reason = "stop"
            return True
    if len(result.token_ids) >= item.max_new_tokens:
        # a grammar row whose last token completed its value is whole, not cut
        complete = item.grammar is not None and item.grammar.complete
        result.finish_reason = "stop" if complete else "length"
        return True
    return False


def final_text(row: DecodeRow, tokenizer: Any) -> str:
    """The row's text, cut before the first stop string it contains."""
    text = tokenizer.decode(row.result.token_ids, skip_special_tokens=True)
    cuts = [text.index(stop) for stop in row.item.stop if stop in text]
    return text[: min(cuts)] if cuts else text
