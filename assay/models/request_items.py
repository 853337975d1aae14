"""A `ChatRequest` as one row of a local generation batch.

The in-process backend (`local_backend.py`) resolves what needs its loaded state (the LoRA
adapter, the compiled grammar of a `response_format` or forced tool call); the rest of the
request is read here: the prompt through the chat template (with `tools`, and a final
assistant message to continue, `budget.split_prefill`), `max_tokens` (or
`max_completion_tokens`), `temperature` (default 1.0, OpenAI's; 0 = greedy), `top_p`,
`top_k`, `stop`, `seed` mixed with the request's `sample_index`, and `ignore_eos`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from assay.curate.llm.types import ChatRequest, sample_seed
from assay.models.budget import split_prefill
from assay.models.chat_format import render_prompt

if TYPE_CHECKING:  # torch is imported only when a batch runs
    from assay.models.batch_generate import GenerationItem

DEFAULT_MAX_TOKENS = 256  # a bound for requests that set none; the small models ramble


def max_new_tokens(params: dict[str, Any]) -> int:
    """The request's token budget: `max_tokens`, `max_completion_tokens` or the default."""
    return int(
        params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS
    )


def generation_item(
    request: ChatRequest, tokenizer: Any, adapter: str | None, grammar: Any
) -> tuple[GenerationItem, int]:
    """The batch row for `request` (adapter and grammar already resolved) and its prompt's
    length in tokens."""
    from assay.models.batch_generate import GenerationItem

    params = request.params
    tools = list(request.tools) if request.tools else None
    # continue_final_message: the model continues a final assistant message (budget.py)
    messages, prefill = split_prefill(list(request.messages), params)
    prompt = render_prompt(tokenizer, messages, tools) + prefill
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    stop = params.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    seed = params.get("seed")
    if seed is not None:
        seed = sample_seed(int(seed), request.sample_index)
    temperature = params.get("temperature")
    top_p = params.get("top_p")
    item = GenerationItem(
        prompt_ids=list(ids),
        max_new_tokens=max_new_tokens(params),
        temperature=1.0 if temperature is None else float(temperature),
        top_p=1.0 if top_p is None else float(top_p),
        top_k=int(params.get("top_k") or 0),
        seed=seed,
        stop=stop,
        adapter=adapter,
        grammar=grammar,
        ignore_eos=bool(params.get("ignore_eos", False)),
    )
    return item, len(ids)
