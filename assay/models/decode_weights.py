"""The projection weights of the fast decode step, fused and packed once per model and precision.

`fast_decode.DecodeStep` runs seven projections per layer and the lm_head on every step; at
batch 32 they are most of the decode time on a CPU, and their speed depends on how the weights
are held, not only on their dtype. Measured on 2 Zen 4 cores (bench/results/local_generation.md):

- q/k/v are one matrix multiplication and gate/up another (two calls instead of five, each
  reading a larger matrix);
- the weights are reordered once into oneDNN's blocked layout for the matmul kernel
  (`torch.ops.mkldnn._reorder_linear_weight`), which `torch.ops.mkldnn._linear_pointwise` then
  reads directly: a plain `F.linear` re-lays-out (bf16) or runs MKL's sgemm, which on this AMD
  CPU reaches about half of oneDNN's rate once the weights stream from memory.

`fp32` keeps fp32 weights and arithmetic: only the summation order inside each dot product
differs from `nn.Linear` (oneDNN's blocking instead of MKL's), which moves logits by about
1e-6 of their size. `bf16` rounds weights and activations to bfloat16 for the products (the
sums stay fp32, the outputs are bfloat16). Where the oneDNN operators are missing (a torch
build without mkldnn, a GPU) the fused weights are used with `F.linear`.

The lm_head has one more trick (`HeadWeights.greedy`): a greedy pick needs the argmax of the
fp32 logits, not all of them. A bfloat16 pass over the vocabulary gives every logit to within
a bound that follows from bfloat16's rounding and the Cauchy-Schwarz inequality; only the
tokens that can still be the maximum under that bound get their fp32 logit, and the argmax
among them is the fp32 argmax (same token, same tie rule), at about half the cost of the fp32
lm_head. Sampled rows still get all their fp32 logits. The screen pays only where the CPU
multiplies bfloat16 natively (AVX512-BF16 / AMX): on an AVX2-only CPU bfloat16 products are
emulated at about a third of fp32's speed (bench/results/local_generation.md), so there the
greedy pick is the plain argmax of the fp32 lm_head.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from assay.models.multi_lora import MultiLoraLinear

PACK_ROWS = 32  # the batch size oneDNN's weight layout is chosen for (other sizes still run)


def _base(module: Any) -> torch.nn.Linear:
    return module.base if isinstance(module, MultiLoraLinear) else module


def native_bf16(device: torch.device) -> bool:
    """True where bfloat16 matmuls run natively: a CUDA GPU with bf16, or a CPU with
    AVX512-BF16 or AMX; elsewhere (AVX2, or AVX-512 without BF16) torch emulates them,
    slower than fp32. (oneDNN's `_is_mkldnn_bf16_supported` is True on any AVX-512 CPU, so
    it is not the check.)"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    return any(check is not None and check() for check in checks)


def onednn_available(device: torch.device) -> bool:
    """True where weights can be packed for oneDNN's CPU matmul (x86/ARM CPU builds)."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and _LINEAR is not None
    )


class Packed:
    """One (possibly fused) weight matrix `(out, in)` ready for `x @ weight.T`, plus its bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        weight = weight.detach().to(dtype).contiguous()
        self.dtype = dtype
        self.out_features = weight.shape[0]
        self.bias = None if bias is None else bias.detach().float()
        self.packed: torch.Tensor | None = None
        if onednn_available(weight.device):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
            except RuntimeError:  # an unsupported dtype on this CPU: plain F.linear
                self.packed = None
        self.weight = weight if self.packed is None else None
        self.plain = self.packed is not None and dtype == torch.float32 and self.bias is None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 `x @ W.T + b` for `x` `(rows, in)` (bf16 weights: bf16 products, rounded out)."""
        if self.plain:  # fp32, packed, no bias: the common case, one call
            return _LINEAR(x, self.packed, None, "none", [], "")
        x = x.to(self.dtype)
        if self.packed is not None:
            out = _LINEAR(x, self.packed, None, "none", [], "")
        else:
            out = F.linear(x, self.weight)
        out = out.float()
        return out if self.bias is None else out + self.bias


_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _fuse(modules: list[Any], dtype: torch.dtype) -> Packed:
    bases = [_base(m) for m in modules]
    weight = torch.cat([b.weight.detach() for b in bases])
    bias = None
    if any(b.bias is not None for b in bases):
        bias = torch.cat(
            [b.bias if b.bias is not None else b.weight.new_zeros(b.out_features) for b in bases]
        )
    return Packed(weight, bias, dtype)


@dataclass
class LayerWeights:
    qkv: Packed
    o: Packed
    gate_up: Packed
    down: Packed


# bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most 2**-8 of it
_BF16_UNIT = 2.0**-8
_FP32_UNIT = 2.0**-24
BLOCK = 64  # tokens per block of the screen (block maxima first, then the tokens of a few blocks)
MAX_PAIRS = 8192  # (row, token) candidates beyond which a step computes all fp32 logits instead


class HeadWeights:
    """The lm_head: fp32 logits (`logits`) and the exact greedy argmax (`greedy`).

    `greedy` screens the vocabulary with a bfloat16 pass: each screened logit `a_j` is within
    `c * |x| * |w_j|` of the fp32 logit (bfloat16 rounding of x, w and the output, and fp32
    summation in either pass, bound through Cauchy-Schwarz; `c` below), so only tokens whose
    `a_j + bound_j` reaches the best `a_j - bound_j` of their row can be the fp32 argmax. Their
    fp32 logits (a handful per row on SmolLM2: median 4, at most 45 in
    bench/results/local_generation.md) are computed exactly and the largest wins, the lowest
    token id on ties, as `torch.argmax` picks. The screen's rows are sorted by norm in blocks
    of `BLOCK`, so whole blocks are ruled out from their maxima without a pass over every
    candidate of the vocabulary.
    """

    def __init__(self, head: Any, dtype: torch.dtype, screen: bool | None = None) -> None:
        """`screen`: greedy picks through the bf16 screen (True) or the full fp32 lm_head
        (False); None: the screen where bf16 is native (`native_bf16`)."""
        weight = _base(head).weight.detach()
        if _base(head).bias is not None:
            raise ValueError("an lm_head with a bias is not supported")
        self.full = Packed(weight, None, dtype)
        self.weight = weight  # fp32 rows of the candidate tokens are read from here
        vocab, inner = weight.shape
        norms = weight.float().norm(dim=-1)
        self.screen: Packed | None = None
        if not (native_bf16(weight.device) if screen is None else screen):
            return  # greedy takes the fp32 argmax: an emulated bf16 screen costs more
        self.order = norms.argsort(descending=True)  # screen position -> token id
        padded = -(-vocab // BLOCK) * BLOCK
        screen = weight.new_zeros((padded, inner))
        screen[:vocab] = weight[self.order]
        self.screen = Packed(screen, None, torch.bfloat16)
        self.vocab = vocab
        sorted_norms = torch.zeros(padded, device=weight.device)
        sorted_norms[:vocab] = norms[self.order]
        self.norms = sorted_norms.view(-1, BLOCK)  # (blocks, BLOCK), by screen position
        self.block_norms = self.norms.amax(dim=-1)  # largest norm in each block
        gamma = inner * _FP32_UNIT / (1 - inner * _FP32_UNIT)  # fp32 summation, any order
        # |a_j - l_j| <= c * sum_k |x_k| |w_jk| <= c * |x| * |w_j|, from rounding x and w to
        # bf16 (2u + u^2), the bf16 output (u (1 + u)^2), the fp32 sums of both passes (gamma
        # each, the screen's over products up to (1 + u)^2 larger); 1% slack covers the
        # rounding of the norms and of the bound's own arithmetic
        u = _BF16_UNIT
        c = (2 * u + u * u) + u * (1 + u) ** 2 + gamma * (1 + (1 + u) ** 2) * (1 + u)
        self.c = 1.01 * c

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits `(rows, vocab)` (bf16 products when packed in bf16)."""
        return self.full(hidden)

    def greedy(self, hidden: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """Each row's argmax over the vocabulary of its fp32 logits `hidden @ W.T`.

        Ties go to the lowest token id, as `torch.argmax`. With `mask(logits)` (sets tokens
        a grammar forbids to -inf in place, rows in `hidden`'s order) the rows get their full
        fp32 logits instead: the mask is by token id.
        """
        if mask is not None:
            logits = self.full(hidden)
            mask(logits)
            return logits.argmax(dim=-1)
        if self.screen is None:
            return self.full(hidden).argmax(dim=-1)
        rows = hidden.shape[0]
        hidden = hidden.float()
        approx = self.screen(hidden)
        if approx.shape[1] != self.vocab:
            approx[:, self.vocab :] = float("-inf")  # padding of the last block
        blocks = approx.view(rows, -1, BLOCK)
        scale = self.c * hidden.norm(dim=-1)  # (rows,): the bound is scale * |w_j|
        block_best = blocks.amax(dim=-1)
        block_bound = scale[:, None] * self.block_norms
        # a lower bound on each row's best fp32 logit, from the best token of each block
        floor = (block_best - block_bound).amax(dim=-1)
        row, block = (block_best + block_bound >= floor[:, None]).nonzero().unbind(1)
        values = blocks[row, block]  # (pairs, BLOCK)
        reach = values + scale[row, None] * self.norms[block]
        pair, offset = (reach >= floor[row, None]).nonzero().unbind(1)
        if pair.numel() > MAX_PAIRS:
            return self.full(hidden).argmax(dim=-1)
        row = row[pair]
        token = self.order[block[pair] * BLOCK + offset]
        exact = (hidden[row] * self.weight[token]).sum(dim=-1)
        best = torch.full((rows,), float("-inf"), device=hidden.device)
        best = best.scatter_reduce(0, row, exact, "amax")
        winner = torch.where(exact == best[row], token, self.vocab)
        tokens = torch.full((rows,), self.vocab, dtype=torch.long, device=hidden.device)
        tokens = tokens.scatter_reduce(0, row, winner, "amin")
        lost = (tokens == self.vocab).nonzero().flatten()
        if lost.numel():  # non-finite hidden states: no bound holds, take the plain argmax
            tokens[lost] = self.full(hidden[lost]).argmax(dim=-1)
        return tokens


@dataclass
class DecodeWeights:
    layers: list[LayerWeights]
    head: HeadWeights


_CACHE: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def decode_weights(model: Any, precision: str) -> DecodeWeights:
    """The model's projections fused and packed for `precision` ("fp32" or "bf16"), made once.

    The packed copies follow the weights they were made from: loading LoRA adapters does not
    change base weights, but a model whose weights are replaced must not reuse old copies.
    """
    per_model = _CACHE.setdefault(model, {})
    params = list(model.parameters())
    stamp = [id(p) for p in params] + [p._version for p in params]
    cached = per_model.get(precision)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    layers = []
    with torch.no_grad():
        for layer in model.model.layers[: model.config.num_hidden_layers]:
            attention, mlp = layer.self_attn, layer.mlp
            layers.append(
                LayerWeights(
                    qkv=_fuse([attention.q_proj, attention.k_proj, attention.v_proj], dtype),
                    o=_fuse([attention.o_proj], dtype),
                    gate_up=_fuse([mlp.gate_proj, mlp.up_proj], dtype),
                    down=_fuse([mlp.down_proj], dtype),
                )
            )
        weights = DecodeWeights(layers, HeadWeights(model.lm_head, dtype))
    per_model[precision] = (stamp, weights)
    return weights
