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
"""

from __future__ import annotations

from typing import Any

import torch

GROW_COLUMNS = 128  # columns added when the buffer is full


class StaticKVCache:
    """Keys, values and the padding mask of a batch, written in place column by column."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], valid: torch.Tensor):
        self.keys, self.values, self.valid = keys, values, valid
        self.length = valid.shape[1]

    @classmethod
    def from_dynamic(cls, cache: Any, attention: torch.Tensor, room: int) -> StaticKVCache:
        """Move a prefilled `DynamicCache` into buffers with `room` free columns.

        `attention` is the prefill's `(rows, columns)` 0/1 mask, padding included.
        """
        rows, length = attention.shape
        capacity = length + max(1, room)
        keys, values = [], []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            if k.shape[2] != length:
                raise ValueError(f"cache has {k.shape[2]} columns, the mask {length}")
            kb = k.new_empty((rows, k.shape[1], capacity, k.shape[3]))
            vb = v.new_empty((rows, v.shape[1], capacity, v.shape[3]))
            kb[:, :, :length].copy_(k)
            vb[:, :, :length].copy_(v)
            keys.append(kb)
            values.append(vb)
        valid = torch.zeros((rows, capacity), dtype=torch.bool, device=attention.device)
        valid[:, :length] = attention.bool()
        cache = cls(keys, values, valid)
        cache.length = length
        return cache

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
        """The `(rows, 1, 1, length)` boolean attention mask of the next query."""
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
