"""Many LoRA adapters on one base model, each row of a batch through its own adapter.

peft's mixed-adapter batches (`adapter_names=`) loop over the adapters present in a batch
inside every LoRA layer, so a batch that mixes ten adapters pays ten sub-batch passes per
layer. Here every adapter's matrices are stacked per layer (index 0 is "no adapter", all
zeros) and a batch gathers each row's pair and applies them with two batched matmuls
(the BGMV scheme of Punica / S-LoRA): the cost per layer does not grow with the number of
adapters in the batch. A batch whose rows all use one adapter uses a plain matmul; a batch
of base rows skips the adapters entirely.

Reads standard PEFT LoRA adapter directories (`adapter_config.json` +
`adapter_model.safetensors`) for `nn.Linear` targets: plain LoRA and rsLoRA scaling, any
rank per adapter. DoRA, `modules_to_save`, and per-module rank/alpha patterns are refused
with an error (load such an adapter with peft directly, or merge it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

_PREFIX = "base_model.model."


class MultiLoraLinear(nn.Module):
    """An `nn.Linear` plus per-row LoRA deltas chosen by the owning `MultiLora`'s routing."""

    def __init__(self, base: nn.Linear, owner: MultiLora) -> None:
        super().__init__()
        self.base = base
        self._owner = [owner]  # a list, so the owner is not registered as a submodule
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stacks: tuple[torch.Tensor, torch.Tensor] | None = None
        self._version = -1

    def add(self, index: int, a_t: torch.Tensor, b_t: torch.Tensor) -> None:
        """Adapter `index`: delta = x @ a_t @ b_t, with a_t (in, r) and b_t (r, out) scaled."""
        weight = self.base.weight
        self.pairs[index] = (a_t.to(weight), b_t.to(weight))
        self._version = -1

    def stacks(self) -> tuple[torch.Tensor, torch.Tensor]:
        owner = self._owner[0]
        if self._stacks is None or self._version != owner.version:
            count = len(owner.names) + 1
            rank = max(a.shape[1] for a, _ in self.pairs.values())
            weight = self.base.weight
            a_stack = weight.new_zeros((count, weight.shape[1], rank))
            b_stack = weight.new_zeros((count, rank, weight.shape[0]))
            for index, (a_t, b_t) in self.pairs.items():
                a_stack[index, :, : a_t.shape[1]] = a_t
                b_stack[index, : b_t.shape[0], :] = b_t
            self._stacks, self._version = (a_stack, b_stack), owner.version
        return self._stacks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        rows, uniform = self._owner[0].current
        if rows is None or not self.pairs:
            return out
        a_stack, b_stack = self.stacks()
        if uniform is not None:
            if uniform not in self.pairs:
                return out
            return out + (x @ a_stack[uniform]) @ b_stack[uniform]
        flat = x if x.dim() == 3 else x.unsqueeze(1)
        delta = torch.bmm(torch.bmm(flat, a_stack[rows]), b_stack[rows])
        return out + delta.view_as(out)


class MultiLora:
    """The adapters attached to one model, and which adapter each row of a forward uses."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names: list[str] = []
        self.version = 0
        self.current: tuple[torch.Tensor | None, int | None] = (None, None)
        self._layers: dict[str, MultiLoraLinear] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def load(self, name: str, adapter_dir: str | Path) -> None:
        """Attach the PEFT LoRA adapter in `adapter_dir` under `name`."""
        from safetensors.torch import load_file

        directory = Path(adapter_dir)
        config = json.loads((directory / "adapter_config.json").read_text())
        _check_supported(config, directory)
        rank, alpha = config["r"], config["lora_alpha"]
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        weights_file = directory / "adapter_model.safetensors"
        if not weights_file.exists():
            raise FileNotFoundError(f"{directory} has no adapter_model.safetensors")
        weights = load_file(str(weights_file))
        index = len(self.names) + 1
        pairs = {}
        for key, a in weights.items():
            if not key.endswith(".lora_A.weight"):
                continue
            path = key.removeprefix(_PREFIX).removesuffix(".lora_A.weight")
            b = weights[key.replace(".lora_A.", ".lora_B.")]
            pairs[path] = (a.t().contiguous(), (b.t() * scale).contiguous())
        if not pairs:
            raise ValueError(f"{directory}: no LoRA weights found in {weights_file.name}")
        # resolve every target first: a failure half-way must not leave this adapter's
        # weights in some layers under an index the next adapter will reuse
        layers = {path: self._layer(path) for path in pairs}
        for path, (a_t, b_t) in pairs.items():
            layers[path].add(index, a_t, b_t)
        self.names.append(name)
        self.version += 1

    def _layer(self, path: str) -> MultiLoraLinear:
        if path not in self._layers:
            parent_path, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_path)
            base = getattr(parent, child)
            if not isinstance(base, nn.Linear):
                raise ValueError(f"LoRA target {path} is a {type(base).__name__}, not nn.Linear")
            wrapped = MultiLoraLinear(base, self)
            setattr(parent, child, wrapped)
            self._layers[path] = wrapped
        return self._layers[path]

    @contextmanager
    def routing(self, adapters: list[str | None], device: Any = None) -> Iterator[None]:
        """Within the block, row i of a forward uses adapter `adapters[i]` (None = base)."""
        indices = [0 if a is None else self.names.index(a) + 1 for a in adapters]
        if not self.names or not any(indices):
            self.current = (None, None)
        elif len(set(indices)) == 1:
            self.current = (torch.tensor(indices, device=device), indices[0])
        else:
            self.current = (torch.tensor(indices, device=device), None)
        try:
            yield
        finally:
            self.current = (None, None)


def _check_supported(config: dict[str, Any], directory: Path) -> None:
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}")
    if config.get("use_dora"):
        problems.append("DoRA")
    if config.get("modules_to_save"):
        problems.append("modules_to_save")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        problems.append("per-module rank/alpha patterns")
    if config.get("fan_in_fan_out"):
        problems.append("fan_in_fan_out")
    if config.get("lora_bias"):
        problems.append("lora_bias")
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    if any("embed" in t for t in targets):
        problems.append("LoRA on embeddings")
    if problems:
        raise ValueError(
            f"adapter {directory} uses {', '.join(problems)}, which multi-adapter serving does "
            "not support; merge it into the base model (peft merge_and_unload) instead"
        )
