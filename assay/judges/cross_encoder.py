"""A grounding cross-encoder: (context chunk, claim) -> P(the claim is supported).

Contexts longer than the encoder's window are split into overlapping token windows and the
claim is scored against every one; the claim's score is its best chunk's (as MiniCheck
does), so nothing in the context is cut off. The claim is the response, preceded by the end
of the prompt (question or dialogue history) when there is one: the prompt gets at most
`prompt_tokens` tokens (its last ones), the response is never shortened unless it alone fills
the window (then it keeps its first tokens and `truncated_claims` counts it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Encoded:
    """Model inputs for a list of claims: one entry per (claim, chunk), `owner[i]` the claim."""

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    chunk_text: list[str] = field(default_factory=list)
    truncated_claims: int = 0


class ChunkedPairs:
    """Turns (context, prompt, response) rows into (chunk, claim) token pairs for a tokenizer."""

    def __init__(
        self, tokenizer: Any, max_length: int = 256, prompt_tokens: int = 64, overlap: int = 32
    ) -> None:
        self.tok = tokenizer
        self.max_length = max_length
        self.prompt_tokens = prompt_tokens
        self.overlap = overlap

    def claim_ids(self, prompt: str, response: str) -> tuple[list[int], bool]:
        response_ids = self.tok(response or "", add_special_tokens=False)["input_ids"]
        budget = self.max_length // 2
        truncated = len(response_ids) > budget
        response_ids = response_ids[:budget]
        if prompt:
            prompt_ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
            room = min(self.prompt_tokens, budget - len(response_ids))
            if room > 0:
                sep = [self.tok.sep_token_id] if self.tok.sep_token_id is not None else []
                response_ids = prompt_ids[-room:] + sep + response_ids
        return response_ids, truncated

    def chunks(self, context_ids: list[int], window: int) -> list[list[int]]:
        if len(context_ids) <= window:
            return [context_ids]
        step = max(1, window - self.overlap)
        out = []
        for start in range(0, len(context_ids), step):
            out.append(context_ids[start : start + window])
            if start + window >= len(context_ids):
                break
        return out

    def encode(self, rows: list[dict[str, str]], best_chunk_only: bool = False) -> Encoded:
        """Every chunk of every row; with `best_chunk_only` (training) only the chunk sharing
        the most words with the claim."""
        out = Encoded()
        for i, row in enumerate(rows):
            claim, truncated = self.claim_ids(row.get("prompt") or "", row["response"])
            out.truncated_claims += truncated
            context_ids = self.tok(row["context"] or "", add_special_tokens=False)["input_ids"]
            window = max(16, self.max_length - len(claim) - 3)
            pieces = self.chunks(context_ids, window)
            if best_chunk_only and len(pieces) > 1:
                claim_words = set(_WORD.findall(row["response"].lower()))
                texts = [self.tok.decode(p) for p in pieces]
                best = max(
                    range(len(pieces)),
                    key=lambda k: len(claim_words & set(_WORD.findall(texts[k].lower()))),
                )
                pieces = [pieces[best]]
            for piece in pieces:
                cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
                ids = [cls, *piece, sep, *claim, sep]  # BERT's pair layout
                types = [0] * (len(piece) + 2) + [1] * (len(claim) + 1)
                out.input_ids.append(ids)
                out.token_type_ids.append(types)
                out.owner.append(i)
        return out


def batches(encoded: Encoded, batch_size: int, pad_id: int) -> list[tuple[list[int], dict]]:
    """Length-sorted padded batches: (positions into `encoded`, tensors)."""
    import torch

    order = sorted(range(len(encoded.input_ids)), key=lambda k: len(encoded.input_ids[k]))
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded.input_ids[k]) for k in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, k in enumerate(idx):
            n = len(encoded.input_ids[k])
            ids[row, :n] = torch.tensor(encoded.input_ids[k])
            types[row, :n] = torch.tensor(encoded.token_type_ids[k])
            mask[row, :n] = 1
        out.append((idx, {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}))
    return out


def score_rows(
    model: Any, pairs: ChunkedPairs, rows: list[dict[str, str]], batch_size: int = 32
) -> tuple[list[float], list[int], list[int]]:
    """Per row: the best chunk's P(supported), which chunk it was, and how many there were."""
    import torch

    encoded = pairs.encode(rows)
    probs = [0.0] * len(encoded.input_ids)
    pad = pairs.tok.pad_token_id or 0
    model.eval()
    with torch.inference_mode():
        for idx, tensors in batches(encoded, batch_size, pad):
            logits = model(**tensors).logits[:, -1]
            for k, p in zip(idx, torch.sigmoid(logits).tolist(), strict=True):
                probs[k] = p
    best = [-1.0] * len(rows)
    best_chunk = [0] * len(rows)
    count = [0] * len(rows)
    for k, owner in enumerate(encoded.owner):
        if probs[k] > best[owner]:
            best[owner], best_chunk[owner] = probs[k], count[owner]
        count[owner] += 1
    return best, best_chunk, count
