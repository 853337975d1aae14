"""A preallocated key/value cache for the decode loop of `fast_decode.py`.

Hugging Face's `DynamicCache` grows by `torch.cat` on every step: each step copies every
layer's whole cache (30 layers x keys and values for SmolLM2), which is 17% of a batch-32
decode on CPU. Here each layer's keys and values live in one buffer with room for more
columns; a step writes its column in place (the prefill its columns, straight from
`fast_decode.DecodeStep`, never through a `DynamicCache`), and attention reads a view of the
filled columns.
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
        length: int = 0,
        prefix_keys: list[torch.Tensor] | None = None,
        prefix_values: list[torch.Tensor] | None = None,
    ):
        self.keys, self.values, self.valid = keys, values, valid
        self.length = length
        self.prefix_keys, self.prefix_values = prefix_keys, prefix_values

    @classmethod
    def empty(
        cls,
        rows: int,
        layers: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> StaticKVCache:
        """A cache of `rows` with room for `capacity` columns and nothing written yet."""
        shape = (rows, kv_heads, capacity, head_dim)
        keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(layers)]
        valid = torch.zeros((rows, capacity), dtype=torch.bool, device=device)
        return cls(keys, values, valid)

    @classmethod
    def after_prefix(
        cls, prefix: StaticKVCache, group: torch.Tensor, capacity: int, once: bool
    ) -> StaticKVCache:
        """A cache whose rows start with a prefix already run in `prefix` (one row per set of
        weights, e.g. per LoRA adapter); row i continues `prefix` row `group[i]`.

        `once`: every row continues the same prefix row, which is held once for all of them
        (`prefix_keys` / `prefix_values`), and the rows' own columns start empty; otherwise each
        row gets its own copy of its prefix row's columns. `capacity`: own columns to allocate
        after the prefix.
        """
        length = prefix.length
        rows = group.shape[0]
        first = prefix.keys[0]
        kv_heads, head_dim = first.shape[1], first.shape[3]
        layers = len(prefix.keys)
        if once:
            cache = cls.empty(
                rows, layers, kv_heads, head_dim, capacity, dtype=first.dtype, device=first.device
            )
            cache.prefix_keys = [k[0, :, :length].contiguous() for k in prefix.keys]
            cache.prefix_values = [v[0, :, :length].contiguous() for v in prefix.values]
            return cache
        cache = cls.empty(
            rows,
            layers,
            kv_heads,
            head_dim,
            length + capacity,
            dtype=first.dtype,
            device=first.device,
        )
        for own, theirs in ((cache.keys, prefix.keys), (cache.values, prefix.values)):
            for layer, buffer in enumerate(own):
                buffer[:, :, :length].copy_(theirs[layer][group, :, :length])
        cache.valid[:, :length] = prefix.valid[group, :length]
        cache.length = length
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

    def open_columns(self, valid: torch.Tensor | None = None, count: int = 1) -> None:
        """Make room for the next `count` columns (growing the buffers if full) and mark which
        hold real tokens: `valid` `(rows, count)` (padding False), or all of them."""
        if valid is not None:
            count = valid.shape[1]
        if self.length + count > self.capacity:
            more = -(-(self.length + count - self.capacity) // GROW_COLUMNS) * GROW_COLUMNS
            self._resize(self.capacity + more, None)
        columns = slice(self.length, self.length + count)
        self.valid[:, columns] = True if valid is None else valid
        self.length += count

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store the keys and values of the columns opened last: `(rows * count, kv_heads,
        head_dim)`, row-major (each row's `count` columns in order).

        Returns views of the filled keys and values `(rows, kv_heads, length, head_dim)`.
        """
        keys, values = self.keys[layer], self.values[layer]
        rows, kv_heads, _, head_dim = keys.shape
        count = key.shape[0] // rows
        start = self.length - count
        shape = (rows, count, kv_heads, head_dim)
        keys[:, :, start : self.length].copy_(key.view(shape).transpose(1, 2))
        values[:, :, start : self.length].copy_(value.view(shape).transpose(1, 2))
        return keys[:, :, : self.length], values[:, :, : self.length]

    def mask(self, count: int = 1) -> torch.Tensor:
        """The boolean attention mask of the last `count` opened columns' queries over the
        per-row columns (the shared prefix is always attended): `(rows, 1, count, length)`.

        A query sees the real tokens up to its own column, and its own column even where that
        is padding (so no query sees nothing: a padding query's output is unused, but must
        not be NaN, which masked attention would spread to real queries)."""
        visible = self.valid[:, None, None, : self.length]
        if count == 1:
            return visible
        columns = torch.arange(self.length, device=self.valid.device)
        own = torch.arange(self.length - count, self.length, device=self.valid.device)
        causal = columns[None, :] <= own[:, None]  # (count, length)
        diagonal = columns[None, :] == own[:, None]
        return (visible & causal) | diagonal

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
