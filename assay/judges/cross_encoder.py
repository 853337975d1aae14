"""A grounding cross-encoder: (context, claim) -> P(the claim is supported).

The claim is the response, preceded by the end of the prompt (question or dialogue history)
when there is one: the prompt gets at most `prompt_tokens` tokens (its last ones), the
response is never shortened unless it alone fills half the window (then it keeps its first
tokens and `truncated_claims` counts it).

A context that fits the window beside the claim is scored whole. A longer one is never cut
off silently; how it is read is the `select` mode, recorded in the judge and in each row's
rationale:

- `all`: split into overlapping token windows, the claim scored against every one, the
  best window's score counts (MiniCheck's rule). Costs one encoder pass per window.
- `best`: the same windows, but only the one sharing the most content words with the claim
  is scored (one pass).
- `evidence`: the context's sentences are ranked by the content words of the claim they
  cover (greedily: each next sentence adds the most words not yet covered), and the best
  ones, in document order, fill the window (one pass). Every sentence is considered; the
  rationale says how many were kept. This suits a summary, whose sentences come from all
  over the document.

Content words are the claim's word-piece ids less punctuation and a short stop-word list.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

SELECT_MODES = ("all", "best", "evidence")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_STOP = (
    "a an the and or but if of to in on at by for with from as is are was were be been being "
    "it its this that these those he she they them his her their we you i me my our your "
    "not no do does did has have had will would can could should may might must there here "
    "who whom which what when where why how than then so also just very about into over "
    "after before more most such only own same too s t"
)


@dataclass
class Encoded:
    """Model inputs for a list of claims: one entry per (claim, context piece), `owner[i]`
    the claim's row; `notes[row]` says how the row's context was read."""

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    truncated_claims: int = 0


class ChunkedPairs:
    """Turns (context, prompt, response) rows into (context piece, claim) token pairs."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 256,
        prompt_tokens: int = 64,
        overlap: int = 32,
        select: str = "all",
    ) -> None:
        if select not in SELECT_MODES:
            raise ValueError(f"select={select!r}: use one of {', '.join(SELECT_MODES)}")
        self.tok = tokenizer
        self.max_length = max_length
        self.prompt_tokens = prompt_tokens
        self.overlap = overlap
        self.select = select
        self._stop: set[int] | None = None

    # -- claims ---------------------------------------------------------------------------
    def claim_ids(self, prompt: str, response: str) -> tuple[list[int], bool]:
        response_ids = self._ids(response)
        return self._claim(self._ids(prompt) if prompt else [], response_ids)

    def _claim(self, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], bool]:
        budget = self.max_length // 2
        truncated = len(response_ids) > budget
        response_ids = response_ids[:budget]
        if prompt_ids and self.prompt_tokens > 0:
            room = min(self.prompt_tokens, budget - len(response_ids))
            if room > 0:
                sep = [self.tok.sep_token_id] if self.tok.sep_token_id is not None else []
                response_ids = prompt_ids[-room:] + sep + response_ids
        return response_ids, truncated

    def _ids(self, text: str) -> list[int]:
        return self.tok(text or "", add_special_tokens=False)["input_ids"]

    def _many(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def content(self, ids: list[int]) -> set[int]:
        """The content-word ids among `ids` (no punctuation, no stop word)."""
        if self._stop is None:
            stop = set(self._ids(_STOP))
            vocab = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))
            stop |= {i for i, t in enumerate(vocab) if not any(c.isalnum() for c in t)}
            self._stop = stop
        return set(ids) - self._stop

    # -- contexts -------------------------------------------------------------------------
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

    def best_window(self, pieces: list[list[int]], claim: set[int]) -> int:
        return max(range(len(pieces)), key=lambda k: len(claim & set(pieces[k])))

    @staticmethod
    def sentences(context: str, ids: list[int], offsets: list[tuple[int, int]]) -> list[list[int]]:
        """The context's tokens grouped by sentence (a new sentence after . ! ? and a space,
        or a line break), from the tokens' character offsets."""
        starts = [m.end() for m in _SENTENCE.finditer(context)]
        out: list[list[int]] = []
        current = -1
        for token, (begin, _) in zip(ids, offsets, strict=True):
            k = bisect_right(starts, begin)
            if k != current:
                out.append([])
                current = k
            out[-1].append(token)
        return out

    def evidence(
        self, sentences: list[list[int]], claim: set[int], window: int
    ) -> tuple[list[int], str]:
        """The sentences that best cover the claim's content words, in document order,
        within `window` tokens; and a note saying how many were kept."""
        pieces: list[list[int]] = []
        for sentence in sentences:  # a sentence longer than the window is split, not cut
            pieces.extend(sentence[k : k + window] for k in range(0, len(sentence), window))
        words = [claim & set(p) for p in pieces]
        chosen: list[int] = []
        covered: set[int] = set()
        used = 0
        left = set(range(len(pieces)))
        while left:
            best = max(left, key=lambda k: (len(words[k] - covered), len(words[k]), -k))
            left.discard(best)
            if not words[best]:
                break
            if used + len(pieces[best]) > window:
                continue
            chosen.append(best)
            covered |= words[best]
            used += len(pieces[best])
        if not chosen:  # nothing in common: the start of the context, as far as it fits
            for k in range(len(pieces)):
                if used + len(pieces[k]) > window:
                    break
                chosen.append(k)
                used += len(pieces[k])
        chosen.sort()
        total = sum(len(p) for p in pieces)
        note = (
            f"evidence: {len(chosen)} of {len(pieces)} sentences ({used} of {total} "
            f"context tokens, {len(covered)} of {len(claim)} claim words found)"
        )
        return [t for k in chosen for t in pieces[k]], note

    def encode(self, rows: list[dict[str, str]], training: bool = False) -> Encoded:
        """The model inputs of `rows`. In `all` mode a long context gives every window (the
        best one only when `training`); `best` and `evidence` give one piece per row."""
        out = Encoded()
        responses = self._many([row["response"] or "" for row in rows])
        prompts = self._many([row.get("prompt") or "" for row in rows])
        distinct = list(dict.fromkeys(row["context"] or "" for row in rows))
        tokenized = (
            self.tok(
                distinct, add_special_tokens=False, return_offsets_mapping=self.select == "evidence"
            )
            if distinct
            else {"input_ids": []}
        )
        where = {text: k for k, text in enumerate(distinct)}
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
        for i, row in enumerate(rows):
            claim, truncated = self._claim(prompts[i], responses[i])
            out.truncated_claims += truncated
            window = max(16, self.max_length - len(claim) - 3)
            k = where[row["context"] or ""]
            context_ids = tokenized["input_ids"][k]
            if len(context_ids) <= window:
                pieces, note, windows = [context_ids], "whole context", 1
            elif self.select == "evidence":
                text, offsets = distinct[k], tokenized["offset_mapping"][k]
                sentences = self.sentences(text, context_ids, offsets)
                piece, note = self.evidence(sentences, self.content(claim), window)
                pieces, windows = [piece], 1
            else:
                pieces = self.chunks(context_ids, window)
                windows = len(pieces)
                if self.select == "best" or training:
                    best = self.best_window(pieces, self.content(claim))
                    pieces = [pieces[best]]
                    note = f"window {best} of {windows} (most claim words)"
                else:
                    note = f"best of {windows} windows"
            if truncated:
                note += f"; response cut to its first {self.max_length // 2} tokens"
            out.notes.append(note)
            out.windows.append(len(pieces))
            for piece in pieces:
                out.input_ids.append([cls, *piece, sep, *claim, sep])  # BERT's pair layout
                out.token_type_ids.append([0] * (len(piece) + 2) + [1] * (len(claim) + 1))
                out.owner.append(i)
        return out


def batches(
    encoded: Encoded, batch_size: int, pad_id: int, order: list[int] | None = None
) -> list[tuple[list[int], dict]]:
    """Padded batches (positions into `encoded`, tensors); by default length-sorted."""
    if order is None:
        order = sorted(range(len(encoded.input_ids)), key=lambda k: len(encoded.input_ids[k]))
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out.append((idx, pad(encoded, idx, pad_id)))
    return out


def pad(encoded: Encoded, idx: list[int], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(encoded.input_ids[k]) for k in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, k in enumerate(idx):
        n = len(encoded.input_ids[k])
        ids[row, :n] = torch.tensor(encoded.input_ids[k])
        types[row, :n] = torch.tensor(encoded.token_type_ids[k])
        mask[row, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def score_logits(
    model: Any, pairs: ChunkedPairs, rows: list[dict[str, str]], batch_size: int = 32
) -> tuple[list[float], list[str], list[int]]:
    """Per row: the model's logit (the best window's in `all` mode), how its context was
    read, and how many pieces were scored."""
    import torch

    encoded = pairs.encode(rows)
    logits = [0.0] * len(encoded.input_ids)
    pad_id = pairs.tok.pad_token_id or 0
    with torch.inference_mode():
        for idx, tensors in batches(encoded, batch_size, pad_id):
            out = model(**tensors).logits[:, -1].float().tolist()
            for k, z in zip(idx, out, strict=True):
                logits[k] = z
    best = [-float("inf")] * len(rows)
    best_piece = [0] * len(rows)
    seen = [0] * len(rows)
    for k, owner in enumerate(encoded.owner):
        if logits[k] > best[owner]:
            best[owner], best_piece[owner] = logits[k], seen[owner]
        seen[owner] += 1
    notes = [
        f"{note}: window {best_piece[i]}" if note.startswith("best of") else note
        for i, note in enumerate(encoded.notes)
    ]
    return best, notes, encoded.windows
