"""One decode step of a Llama-family model without the generic Hugging Face forward.

`batch_generate.generate_batch` prefills with the model's own forward and then, for models
this module supports (`supports(model)`: Llama and Qwen2 architectures, the embedded
SmolLM2 among them), decodes with `DecodeStep`: the same modules (norms, projections,
rotary embedding, MLP), the same arithmetic as transformers' SDPA attention for one query
token (grouped-query heads packed, boolean padding mask), but with the keys and values in a
preallocated `kv_cache.StaticKVCache` instead of a `DynamicCache` that concatenates every
layer on every step, and without the per-step mask building and output bookkeeping. In fp32
the logits are the model's own, so greedy outputs match the generic path token for token.

`precision="bf16"` runs the matrix multiplications on bfloat16 copies of the weights
(AMX / AVX512-BF16 on recent x86 CPUs), fusing q/k/v and gate/up into one matmul each;
norms, rotary embedding, attention, the residual stream and the logits stay fp32. This is
faster and close but not identical (bench/results/local_generation.md measures how close).
LoRA adapters (`multi_lora.MultiLoraLinear`) keep working in both: in fp32 the wrapped module
runs as is; in bf16 its base weight is fused and its fp32 LoRA delta added to its part.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
import torch.nn.functional as F

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
    if next(model.parameters()).dtype != torch.float32:
        return False
    for layer in inner.layers:
        attention = layer.self_attn
        if not all(hasattr(attention, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return False
        if precision == "bf16" and not all(
            type(m) in (torch.nn.Linear, MultiLoraLinear) for m in _projections(layer)
        ):
            return False
    return precision != "bf16" or type(model.lm_head) is torch.nn.Linear


def _projections(layer: Any) -> list[Any]:
    attention, mlp = layer.self_attn, layer.mlp
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return [getattr(attention, n) for n in names] + [
        getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")
    ]


class DecodeStep:
    """Feeds one token per row through the model, reading and writing a `StaticKVCache`."""

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
        self._rotate = sys.modules[type(model.model.layers[0].self_attn).__module__]
        self.weights = _bf16_weights(model) if precision == "bf16" else None

    def __call__(
        self, tokens: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache
    ) -> torch.Tensor:
        """fp32 logits `(rows, vocab)` of the next token after `tokens` `(rows,)`."""
        inner = self.model.model
        hidden = inner.embed_tokens(tokens[:, None])
        cos, sin = inner.rotary_emb(hidden, position_ids=positions[:, None])
        cache.open_column()
        mask = cache.mask()
        for index, layer in enumerate(self.layers):
            residual = hidden
            x = layer.input_layernorm(hidden)
            q, k, v = self._qkv(index, layer.self_attn, x)
            q, k = self._rotate.apply_rotary_pos_emb(q, k, cos, sin)
            keys, values = cache.write(index, k, v)
            attended = self._attend(q, keys, values, mask, cache.prefix(index))
            hidden = residual + self._linear(index, "o", layer.self_attn.o_proj, attended)
            residual = hidden
            hidden = residual + self._mlp(index, layer.mlp, layer.post_attention_layernorm(hidden))
        hidden = inner.norm(hidden)
        return self._linear(-1, "lm_head", self.model.lm_head, hidden)[:, -1, :].float()

    def _qkv(self, index: int, attention: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = x.shape[0]
        if self.weights is None:
            q = attention.q_proj(x)
            k = attention.k_proj(x)
            v = attention.v_proj(x)
        else:
            fused = _mm(x, self.weights[(index, "qkv")])
            q, k, v = fused.split(self._qkv_sizes(), dim=-1)
            q = _plus_lora(q, attention.q_proj, x)
            k = _plus_lora(k, attention.k_proj, x)
            v = _plus_lora(v, attention.v_proj, x)
        q = q.view(rows, 1, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(rows, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(rows, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def _qkv_sizes(self) -> list[int]:
        return [self.heads * self.head_dim, self.kv_heads * self.head_dim] + [
            self.kv_heads * self.head_dim
        ]

    def _attend(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        # transformers' sdpa_attention_forward for one query token: the query heads of each
        # key/value head packed as that head's queries, so no repeat_kv copy of the cache
        rows, groups = q.shape[0], self.heads // self.kv_heads
        q = q.reshape(rows, self.kv_heads, groups, self.head_dim)
        if prefix is None:
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=mask, scale=self.scaling
            )
        else:
            out = self._attend_with_prefix(q, keys, values, mask, *prefix)
        out = out.reshape(rows, self.heads, 1, self.head_dim).transpose(1, 2).contiguous()
        return out.reshape(rows, 1, self.heads * self.head_dim)

    def _attend_with_prefix(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        prefix_keys: torch.Tensor,
        prefix_values: torch.Tensor,
    ) -> torch.Tensor:
        """Attention over the shared prefix (held once) and each row's own columns, in one
        softmax. Every row's queries against the prefix are one matmul per key/value head
        (rows x groups queries by prefix keys), so the prefix is read once per step, not once
        per row. `q` `(rows, kv_heads, groups, head_dim)`; returns the same shape."""
        rows, kv_heads, groups, dim = q.shape
        length = prefix_keys.shape[1]
        q = q * self.scaling
        by_head = q.transpose(0, 1).reshape(kv_heads, rows * groups, dim)
        on_prefix = torch.bmm(by_head, prefix_keys.transpose(1, 2))
        on_prefix = on_prefix.view(kv_heads, rows, groups, length).transpose(0, 1)
        on_own = torch.matmul(q, keys.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
        weights = torch.cat([on_prefix, on_own], dim=-1).softmax(dim=-1)
        to_prefix, to_own = weights.split([length, keys.shape[2]], dim=-1)
        to_prefix = to_prefix.transpose(0, 1).reshape(kv_heads, rows * groups, length)
        from_prefix = torch.bmm(to_prefix, prefix_values).view(kv_heads, rows, groups, dim)
        return from_prefix.transpose(0, 1) + torch.matmul(to_own, values)

    def _mlp(self, index: int, mlp: Any, x: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return mlp(x)
        gate, up = _mm(x, self.weights[(index, "gate_up")]).chunk(2, dim=-1)
        gate = _plus_lora(gate, mlp.gate_proj, x)
        up = _plus_lora(up, mlp.up_proj, x)
        return self._linear(index, "down", mlp.down_proj, mlp.act_fn(gate) * up)

    def _linear(self, index: int, name: str, module: Any, x: torch.Tensor) -> torch.Tensor:
        if self.weights is None:
            return module(x)
        return _plus_lora(_mm(x, self.weights[(index, name)]), module, x)


def _mm(x: torch.Tensor, weight_and_bias: tuple[torch.Tensor, torch.Tensor | None]):
    weight, bias = weight_and_bias
    out = F.linear(x.to(weight.dtype), weight).float()
    return out if bias is None else out + bias


def _plus_lora(out: torch.Tensor, module: Any, x: torch.Tensor) -> torch.Tensor:
    """`out` (the base projection) plus the module's LoRA delta for the routed rows, if any."""
    if not isinstance(module, MultiLoraLinear):
        return out
    rows, uniform = module._owner[0].current
    if rows is None or not module.pairs:
        return out
    a_stack, b_stack = module.stacks()
    if uniform is not None:
        if uniform not in module.pairs:
            return out
        return out + (x @ a_stack[uniform]) @ b_stack[uniform]
    delta = torch.bmm(torch.bmm(x, a_stack[rows]), b_stack[rows])
    return out + delta.view_as(out)


def _base(module: Any) -> torch.nn.Linear:
    return module.base if isinstance(module, MultiLoraLinear) else module


_BF16: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _bf16_weights(model: Any) -> dict[Any, tuple[torch.Tensor, torch.Tensor | None]]:
    """bfloat16 copies of the model's projection weights (fused q/k/v, gate/up), made once.

    The copies follow the fp32 weights they were made from: loading LoRA adapters does not
    change base weights, but a model whose weights are replaced must not reuse old copies.
    """
    cached = _BF16.get(model)
    stamp = [id(p) for p in model.parameters()] + [p._version for p in model.parameters()]
    if cached is not None and cached["stamp"] == stamp:
        return cached["weights"]
    weights: dict[Any, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def fuse(modules: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        bases = [_base(m) for m in modules]
        weight = torch.cat([b.weight.detach() for b in bases]).to(torch.bfloat16).contiguous()
        if all(b.bias is None for b in bases):
            return weight, None
        biases = [
            b.bias if b.bias is not None else b.weight.new_zeros(b.out_features) for b in bases
        ]
        return weight, torch.cat([b.detach().float() for b in biases])

    with torch.no_grad():
        for index, layer in enumerate(model.model.layers[: model.config.num_hidden_layers]):
            attention, mlp = layer.self_attn, layer.mlp
            weights[(index, "qkv")] = fuse([attention.q_proj, attention.k_proj, attention.v_proj])
            weights[(index, "o")] = fuse([attention.o_proj])
            weights[(index, "gate_up")] = fuse([mlp.gate_proj, mlp.up_proj])
            weights[(index, "down")] = fuse([mlp.down_proj])
        weights[(-1, "lm_head")] = fuse([model.lm_head])
    _BF16[model] = {"stamp": stamp, "weights": weights}
    return weights
