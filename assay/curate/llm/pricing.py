"""Cost of a request from its token counts.

Prices come from litellm's bundled price map (the local copy: assay never fetches the
remote one) unless a custom table overrides them. A custom table gives USD per million
tokens: `{"openai/my-finetune": {"input": 0.30, "output": 1.20}}`. Looking a price up in a
dict is much cheaper than `litellm.completion_cost`, which matters at thousands of rows a
second of cached responses. The map is read from the JSON file litellm ships, without
importing litellm (seconds of import, which would stall the direct transport's first answer).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from assay.curate.llm import _litellm

_BUNDLED_MAP = "model_prices_and_context_window_backup.json"


def cost_of(
    model: str,
    input_tokens: int,
    output_tokens: int,
    prices: dict[str, dict[str, float]] | None = None,
) -> float:
    """USD for one request; 0.0 for a model with no known price (a local server)."""
    if prices and model in prices:
        p = prices[model]
        return (input_tokens * p.get("input", 0.0) + output_tokens * p.get("output", 0.0)) / 1e6
    per_in, per_out = _litellm_price(model)
    return input_tokens * per_in + output_tokens * per_out


@lru_cache(maxsize=256)
def _litellm_price(model: str) -> tuple[float, float]:
    table = _price_table()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for name in candidates:
        entry = table.get(name)
        if entry:
            return (
                float(entry.get("input_cost_per_token") or 0.0),
                float(entry.get("output_cost_per_token") or 0.0),
            )
    return 0.0, 0.0


@lru_cache(maxsize=1)
def _price_table() -> dict[str, Any]:
    """litellm's bundled price map: the loaded module's if it is imported, else its file."""
    if _litellm._module is not None:
        return _litellm._module.model_cost
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / _BUNDLED_MAP
        if path.is_file():
            return json.loads(path.read_text())
    return _litellm.get().model_cost
