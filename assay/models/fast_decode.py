"""One decode step of a Llama-family model without the generic Hugging Face forward.

`batch_generate.generate_batch` prefills with the model's own forward and then, for models
this module supports (`supports(model)`: Llama and Qwen2 architectures, the embedded
SmolLM2 among them), decodes with `DecodeStep`: the arithmetic of transformers' forward for
one new token per row (RMS norms, rotary embedding, grouped-query SDPA attention over a
boolean padding mask, SiLU MLP), but with the keys and values in a preallocated
`kv_cache.StaticKVCache` instead of a `DynamicCache` that concatenates every layer on every
step, and without the per-step mask building, module calls and output bookkeeping.

The projections run on weights fused and packed once (`decode_weights.py`: q/k/v as one
matmul, gate/up as one, oneDNN's blocked layout). Precisions:

- `fp32` (default): fp32 weights and arithmetic; logits differ from the generic forward's
  only by summation order inside the matmuls (about 1e-6 of their size), and greedy answers
  equal the generic path's token for token (tests/test_local_speed_*.py; measured on the
  benchmark and on an evaluation in bench/results/local_generation.md).
- `bf16`: bfloat16 weights and activations in the products (fp32 sums); norms, rotary
  embedding, attention and the residual stream stay fp32. Faster, close but not identical.

Greedy rows get the exact fp32 argmax of the lm_head without computing every fp32 logit
(`decode_weights.HeadWeights.greedy`); sampled rows get their full fp32 logits.

LoRA adapters (`multi_lora.MultiLoraLinear`) keep working: each wrapped projection's fp32
delta for the routed rows is added to its part of the fused output. A projection wrapped by
anything else (e.g. peft's own layers) is called as a module (fp32 only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from assay.models.decode_weights import DecodeWeights, decode_weights
from assay.models.kv_cache import StaticKVCache
from assay.models.multi_lora import MultiLoraLinear

SUPPORTED_MODEL_TYPES = {"llama", "qwen2"}
PRECISIONS = ("fp32", "bf16")


def supports(model: Any, precision: str = "fp32") -> bool:
    """True when `DecodeStep` reproduces this model's forward (else use the generic path).

    bf16 also needs every projection to be a plain `nn.Linear` or a `MultiLoraLinear`
    (whose weights it knows how to copy); other wrappers (e.g. peft's) run only in fp32.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(config, "use_sliding_window", False):
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return False
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    if next(model.parameters()).dtype != torch.float32:
        return False
    for layer in inner.layers:
        attention = layer.self_attn
        if not all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return False
    return precision != "bf16" or _packable(model)


def _projections(layer: Any) -> list[Any]:
    attention, mlp = layer.self_attn, layer.mlp
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [getattr(attention, n) for n in names] + [
        getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")
    ]


def _packable(model: Any) -> bool:
    """Every projection and the lm_head are plain linears (LoRA-wrapped ones included)."""
    layers = model.model.layers[: model.config.num_hidden_layers]
    plain = (torch.nn.Linear, MultiLoraLinear)
    return type(model.lm_head) is torch.nn.Linear and all(
        type(m) in plain for layer in layers for m in _projections(layer)
    )


class DecodeStep:
    """Feeds one token per row through the model, reading and writing a `StaticKVCache`.

    `hidden(tokens, positions, cache)` gives the final hidden states; `logits(hidden)` the
    fp32 logits and `greedy(hidden, mask)` the argmax token of each row (without computing
    every fp32 logit). Calling the step gives the logits directly.
    """

    def __init__(self, model: Any, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = model
        self.precision = precision
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.scaling = self.head_dim**-0.5
        self.layers = list(model.model.layers[: config.num_hidden_layers])
        self.weights: DecodeWeights | None = None
        if _packable(model):
            self.weights = decode_weights(model, precision)
        elif precision != "fp32":
            raise ValueError(f"{precision} needs plain linear projections (see supports())")
        half = self.head_dim // 2
        device = next(model.parameters()).device
        # rotate_half(x) * sin == roll(x, half) * (sign * sin): one roll, no slices or cat
        self._sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(device)
        self._q_width = self.heads * self.head_dim
        self._kv_width = self.kv_heads * self.head_dim
        # LoRA-wrapped projections of each layer (their deltas are added after the fused matmul)
        self._lora = [
            [m for m in _projections(layer) if isinstance(m, MultiLoraLinear)]
            for layer in self.layers
        ]

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache
    ) -> torch.Tensor:
        """fp32 logits `(rows, vocab)` of the next token after `tokens` `(rows,)`."""
        return self.logits(self.hidden(tokens, positions, cache))

    def hidden(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: StaticKVCache,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final-norm hidden states `(rows, hidden)` after feeding `tokens` at `positions`.

        One token per row (`(rows,)`, a decode step) or several (`(rows, count)`, a prefill:
        causal attention among them, `valid` `(rows, count)` marks padding False); only the
        last column's hidden state is returned. The tokens' keys and values go into `cache`.
        """
        inner = self.model.model
        rows = tokens.shape[0]
        count = 1 if tokens.dim() == 1 else tokens.shape[1]
        hidden = inner.embed_tokens(tokens.reshape(-1))
        cos, sin = inner.rotary_emb(hidden, position_ids=positions.reshape(rows, count))
        cos = cos.reshape(rows * count, 1, self.head_dim)  # (tokens, 1, head_dim): all heads
        sin = sin.reshape(rows * count, 1, self.head_dim) * self._sign
        cache.open_columns(valid, count)
        mask = cache.mask(count)
        if count > 1:  # each query's mask row for every query head of its key/value head
            groups = self.heads // self.kv_heads
            mask = mask[:, :, :, None].expand(-1, -1, -1, groups, -1).flatten(2, 3)
        if cache.prefix_length:
            mask = ~mask  # the prefix path fills the masked-out scores: invert once per step
        for index, layer in enumerate(self.layers):
            norm = layer.input_layernorm
            x = torch.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)
            q, k, v = self._qkv(index, layer, x, cos, sin, rows)
            keys, values = cache.write(index, k, v)
            attended = self._attend(q, keys, values, mask, cache.prefix(index), count)
            hidden = hidden + self._project(index, "o", layer.self_attn.o_proj, attended, rows)
            norm = layer.post_attention_layernorm
            x = torch.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)
            hidden = hidden + self._mlp(index, layer.mlp, x, rows)
        if count > 1:
            hidden = hidden.view(rows, count, -1)[:, -1]
        norm = inner.norm
        return torch.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits `(rows, vocab)` (bf16 products in bf16)."""
        if self.weights is None:
            return self.model.lm_head(hidden).float()
        return self.weights.head.logits(hidden)

    def greedy(self, hidden: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """Each row's argmax token of the fp32 logits; `mask(logits)` sets forbidden tokens
        to -inf in place (grammars)."""
        if self.weights is None:
            logits = self.logits(hidden)
            if mask is not None:
                mask(logits)
            return logits.argmax(dim=-1)
        return self.weights.head.greedy(hidden, mask)

    def _qkv(
        self,
        index: int,
        layer: Any,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rows: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries `(rows, kv_heads, count * groups, head_dim)` (each key/value head's
        query heads, column-major), keys and values `(rows * count, kv_heads, head_dim)`."""
        tokens, attention = x.shape[0], layer.self_attn
        if self.weights is None:
            fused = torch.cat(
                [attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)], dim=-1
            )
        else:
            fused = self.weights.layers[index].qkv(x)
            if self._lora[index]:
                q_end = self._q_width
                k_end = q_end + self._kv_width
                _add_lora(fused[:, :q_end], attention.q_proj, x, rows)
                _add_lora(fused[:, q_end:k_end], attention.k_proj, x, rows)
                _add_lora(fused[:, k_end:], attention.v_proj, x, rows)
        # queries and keys rotate together: (tokens, heads + kv_heads, head_dim)
        qk = fused[:, : self._q_width + self._kv_width].view(tokens, -1, self.head_dim)
        qk = qk * cos + qk.roll(self.head_dim // 2, dims=-1) * sin
        q, k = qk[:, : self.heads], qk[:, self.heads :]
        v = fused[:, self._q_width + self._kv_width :].view(tokens, self.kv_heads, self.head_dim)
        if tokens == rows:
            return q.view(rows, self.kv_heads, -1, self.head_dim), k, v
        q = q.view(rows, tokens // rows, self.kv_heads, -1, self.head_dim).transpose(1, 2)
        return q.reshape(rows, self.kv_heads, -1, self.head_dim), k, v

    def _attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
        count: int = 1,
    ) -> torch.Tensor:
        # transformers' sdpa_attention_forward: the query heads of each key/value head packed
        # as that head's queries, so no repeat_kv copy of the cache. `mask`: what each query
        # sees (with a prefix: its inverse). Returns `(rows * count, heads * head_dim)`.
        rows = q.shape[0]
        if prefix is None:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling
            )
        else:
            out = self._attend_with_prefix(q, keys, values, mask, *prefix)
        if count > 1:
            out = out.view(rows, self.kv_heads, count, -1, self.head_dim).transpose(1, 2)
        return out.reshape(rows * count, self.heads * self.head_dim)

    def _attend_with_prefix(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        blocked: torch.Tensor,
        prefix_keys: torch.Tensor,
        prefix_values: torch.Tensor,
    ) -> torch.Tensor:
        """Attention over the shared prefix (held once) and each row's own columns, in one
        softmax. Every row's queries against the prefix are one matmul per key/value head
        (rows x groups queries by prefix keys), so the prefix is read once per step, not once
        per row. `q` `(rows, kv_heads, groups, head_dim)`; `blocked` marks the per-row columns
        a query must not see (the inverse of `StaticKVCache.mask`); returns `q`'s shape."""
        rows, kv_heads, groups, dim = q.shape
        length = prefix_keys.shape[1]
        q = q * self.scaling
        by_head = q.transpose(0, 1).reshape(kv_heads, rows * groups, dim)
        on_prefix = torch.bmm(by_head, prefix_keys.transpose(1, 2))
        on_prefix = on_prefix.view(kv_heads, rows, groups, length).transpose(0, 1)
        on_own = torch.matmul(q, keys.transpose(-1, -2)).masked_fill_(blocked, float("-inf"))
        weights = torch.cat([on_prefix, on_own], dim=-1).softmax(dim=-1)
        to_prefix, to_own = weights.split([length, keys.shape[2]], dim=-1)
        to_prefix = to_prefix.transpose(0, 1).reshape(kv_heads, rows * groups, length)
        from_prefix = torch.bmm(to_prefix, prefix_values).view(kv_heads, rows, groups, dim)
        # added into the (contiguous) per-row part, so the caller's reshape needs no copy
        return torch.matmul(to_own, values).add_(from_prefix.transpose(0, 1))

    def _mlp(self, index: int, mlp: Any, x: torch.Tensor, rows: int) -> torch.Tensor:
        if self.weights is None:
            return mlp(x)
        fused = self.weights.layers[index].gate_up(x)
        if self._lora[index]:
            width = fused.shape[-1] // 2
            _add_lora(fused[:, :width], mlp.gate_proj, x, rows)
            _add_lora(fused[:, width:], mlp.up_proj, x, rows)
        gate, up = fused.chunk(2, dim=-1)
        return self._project(index, "down", mlp.down_proj, F.silu(gate) * up, rows)

    def _project(
        self, index: int, name: str, module: Any, x: torch.Tensor, rows: int
    ) -> torch.Tensor:
        if self.weights is None:
            return module(x)
        out = getattr(self.weights.layers[index], name)(x)
        if self._lora[index]:
            _add_lora(out, module, x, rows)
        return out


def _add_lora(out: torch.Tensor, module: Any, x: torch.Tensor, rows: int) -> None:
    """In place: add the module's LoRA delta for the routed rows (if any) to `out`, the base
    projection of `x` `(rows * count, in)` (the arithmetic of `MultiLoraLinear.forward`)."""
    if not isinstance(module, MultiLoraLinear):
        return
    routed, uniform = module._owner[0].current
    if routed is None or not module.pairs:
        return
    a_stack, b_stack = module.stacks()
    if uniform is not None:
        if uniform in module.pairs:
            out += (x @ a_stack[uniform]) @ b_stack[uniform]
        return
    by_row = x.view(rows, -1, x.shape[-1])
    delta = torch.bmm(torch.bmm(by_row, a_stack[routed]), b_stack[routed])
    out += delta.view_as(out)
