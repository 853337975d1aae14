"""A preallocated key/value cache for the decode loop of `fast_decode.py`.

Hugging Face's `DynamicCache` grows by `torch.cat` on every step: each step copies every
layer's whole cache (30 layers x keys and values for SmolLM2), which is 17% of a batch-32
decode on CPU. Here each layer's keys and values live in one buffer with room for more
columns; a step writes its column in place, and attention reads a view of the filled columns.
The buffer grows by a block of columns when full (amortised), and finished rows leave it
only when enough of them have piled up (`compact`), so neither copy happens per step.

Layout per layer: keys and values `(rows, kv_heads, capacity, head_dim)`; `length` columns
are filled, the same number for every row (prompts are left-padded, so a column is one
decode step for all rows). `valid` `(rows, capacity)` marks real tokens (padding is False).

A prefix every row shares with the same weights (a few-shot prompt's system turn and
examples, no LoRA or one adapter for the batch) can be held once instead of per row:
`prefix_keys` / `prefix_values` `(kv_heads, prefix_length, head_dim)` per layer, and the
per-row buffers start after it. A teacher's 800-token prompt copied to 32 rows is 32 reads of
the same keys on every decode step; held once, attention reads it once per step
(`fast_decode.DecodeStep` attends to both parts and joins them in one softmax).
"""

from __future__ import annotations

from typing import Any

import torch

GROW_COLUMNS = 128  # columns added when the buffer is full


class StaticKVCache:
    """Keys, values and the padding mask of a batch, written in place column by column."""

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        valid: torch.Tensor,
        prefix_keys: list[torch.Tensor] | None = None,
        prefix_values: list[torch.Tensor] | None = None,
    ):
        self.keys, self.values, self.valid = keys, values, valid
        self.length = valid.shape[1]
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values

    @classmethod
    def from_dynamic(
        cls, cache: Any, attention: torch.Tensor, room: int, shared: int = 0
    ) -> StaticKVCache:
        """Move a prefilled `DynamicCache` into buffers with `room` free columns.

        `attention` is the prefill's `(rows, columns)` 0/1 mask, padding included. `shared`:
        the first `shared` columns are the same in every row (same tokens, same weights);
        they are kept once, from row 0, as the shared prefix.
        """
        rows, length = attention.shape
        if not 0 <= shared < length:
            raise ValueError(f"shared prefix of {shared} columns in a cache of {length}")
        own = length - shared
        capacity = own + max(1, room)
        keys, values, prefix_keys, prefix_values = [], [], [], []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            if k.shape[2] != length:
                raise ValueError(f"cache has {k.shape[2]} columns, the mask {length}")
            kb = k.new_empty((rows, k.shape[1], capacity, k.shape[3]))
            vb = v.new_empty((rows, v.shape[1], capacity, v.shape[3]))
            kb[:, :, :own].copy_(k[:, :, shared:])
            vb[:, :, :own].copy_(v[:, :, shared:])
            keys.append(kb)
            values.append(vb)
            prefix_keys.append(k[0, :, :shared].contiguous())
            prefix_values.append(v[0, :, :shared].contiguous())
        valid = torch.zeros((rows, capacity), dtype=torch.bool, device=attention.device)
        valid[:, :own] = attention[:, shared:].bool()
        if shared:
            cache = cls(keys, values, valid, prefix_keys, prefix_values)
        else:
            cache = cls(keys, values, valid)
        cache.length = own
        return cache

    @property
    def prefix_length(self) -> int:
        """Columns held once for every row (0 without a shared prefix)."""
        return 0 if self.prefix_keys is None else self.prefix_keys[0].shape[1]

    def prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The shared prefix's `(kv_heads, prefix_length, head_dim)` keys and values."""
        if self.prefix_keys is None or self.prefix_values is None:
            return None
        return self.prefix_keys[layer], self.prefix_values[layer]

    def positions(self) -> torch.Tensor:
        """Each row's position of the next token: its real tokens so far, prefix included."""
        return self.valid[:, : self.length].sum(-1) + self.prefix_length

    @property
    def rows(self) -> int:
        return self.valid.shape[0]

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def open_column(self) -> None:
        """Make room for one more column (all rows real), growing the buffers if full."""
        if self.length == self.capacity:
            self._resize(self.capacity + GROW_COLUMNS, None)
        self.valid[:, self.length] = True
        self.length += 1

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store the step's `(rows, kv_heads, 1, head_dim)` key/value in the open column.

        Returns views of the filled keys and values, for attention.
        """
        column = self.length - 1
        self.keys[layer][:, :, column : column + 1].copy_(key)
        self.values[layer][:, :, column : column + 1].copy_(value)
        return self.keys[layer][:, :, : self.length], self.values[layer][:, :, : self.length]

    def mask(self) -> torch.Tensor:
        """The `(rows, 1, 1, length)` boolean attention mask of the next query over the
        per-row columns (the shared prefix is always attended)."""
        return self.valid[:, None, None, : self.length]

    def compact(self, keep: torch.Tensor) -> None:
        """Keep only the rows in `keep` (a 1-D index tensor), in that order."""
        self._resize(self.capacity, keep)

    def _resize(self, capacity: int, keep: torch.Tensor | None) -> None:
        filled = self.length
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                rows = old.shape[0] if keep is None else keep.shape[0]
                new = old.new_empty((rows, old.shape[1], capacity, old.shape[3]))
                src = old[:, :, :filled] if keep is None else old[keep, :, :filled]
                new[:, :, :filled].copy_(src)
                store[i] = new
        valid = self.valid if keep is None else self.valid[keep]
        new_valid = torch.zeros((valid.shape[0], capacity), dtype=torch.bool, device=valid.device)
        new_valid[:, :filled] = valid[:, :filled]
        self.valid = new_valid
