"""Budget forcing on the local backend: the tiny random model for the plumbing (the prefill is
continued, the budget cuts thinking and forces the answer), the embedded model once
(integration): the configured budgets change how long it thinks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from local_tiny_model import build_tiny_model

from assay.curate.llm.client import LLMClient, LLMSettings
from assay.curate.llm.types import ChatRequest
from assay.models.budget import BudgetForcing
from assay.models.local_backend import LocalBackend
from assay.models.registry import EMBEDDED_ALIAS, ModelRegistry

QUESTIONS = ["What is 3+4?", "What is 12+9?"]


def asks(model: str, **params: object) -> list[ChatRequest]:
    return [
        ChatRequest(
            model=model,
            messages=({"role": "user", "content": q},),
            params={"temperature": 0, **params},
        )
        for q in QUESTIONS
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    root = tmp_path_factory.mktemp("tiny")
    registry = ModelRegistry(root / "registry.json")
    registry.register_model("tiny-budget", build_tiny_model(root / "model"))
    backend = LocalBackend("tiny-budget", registry=registry, device="cpu", threads=1)
    backend.load()
    yield backend
    backend.close()


def test_continue_final_message_renders_the_prefill_without_ending_the_turn(tiny) -> None:
    prefix = "The sum is"
    request = ChatRequest(
        model="local/tiny-budget",
        messages=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": prefix}),
        params={"continue_final_message": True, "max_tokens": 4},
    )
    item, _ = tiny._item_for(request)
    prompt = tiny.tokenizer.decode(item.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n" + prefix)
    # without the flag the assistant message is a finished turn and a new one starts
    plain = ChatRequest(model=request.model, messages=request.messages, params={"max_tokens": 4})
    item, _ = tiny._item_for(plain)
    assert tiny.tokenizer.decode(item.prompt_ids).endswith(
        prefix + "<|im_end|>\n<|im_start|>assistant\n"
    )


class _Direct:
    """The LLM client's `complete_many` over one backend (no cache or limits needed here)."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend

    async def complete_many(self, requests):
        return await asyncio.gather(*(self.backend.complete(r) for r in requests))


@pytest.mark.parametrize("budget", [3, 9])
def test_the_budget_cuts_thinking_and_forces_the_answer(tiny, budget: int) -> None:
    forcing = BudgetForcing(
        max_thinking_tokens=budget, max_answer_tokens=5, think_end="Final answer:"
    )
    # ignore_eos: the random model never ends by itself, so only the budget stops it
    requests = asks("local/tiny-budget", ignore_eos=True)
    results = asyncio.run(forcing.run(_Direct(tiny), requests))  # type: ignore[arg-type]
    for result in results:
        assert result.forced and result.thinking_tokens == budget
        assert result.response.finish_reason == "length"
        assert result.rounds == 2  # one thinking round (no minimum), one answer round
        assert result.response.output_tokens == budget + 5
        assert result.response.text is not None and result.response.error is None


def test_an_early_stop_gets_wait_until_the_minimum(tiny) -> None:
    # a stop string the model is sure to produce soon stands in for "end of thinking"
    forcing = BudgetForcing(
        max_thinking_tokens=40, min_thinking_tokens=30, max_waits=2, max_answer_tokens=3
    )
    probe = asyncio.run(_Direct(tiny).complete_many(asks("local/tiny-budget", max_tokens=6)))
    marker = probe[0].text[2:4]  # two characters the greedy model writes early on
    forcing = forcing.model_copy(update={"think_end": marker})
    result = asyncio.run(forcing.run(_Direct(tiny), asks("local/tiny-budget")[:1]))[0]  # type: ignore[arg-type]
    assert result.waits >= 1 and result.response.reasoning.count("Wait") == result.waits
    assert result.rounds == result.waits + 2 or result.forced


@pytest.mark.integration
@pytest.mark.timeout(1800)  # a shared 2-core machine decodes the 135M model at ~1 token/s
def test_budget_forcing_changes_the_embedded_models_thinking_length(workspace: Path) -> None:
    from assay.models.shared_backends import register_local_backend

    register_local_backend()
    model = f"local/{EMBEDDED_ALIAS}"
    client = LLMClient(LLMSettings(model=model))
    system = {"role": "system", "content": "Think step by step, then give the answer."}
    requests = [
        ChatRequest(model=model, messages=(system, *r.messages), params=r.params)
        for r in asks(model)[:1]
    ]
    short = BudgetForcing(max_thinking_tokens=6, max_answer_tokens=4)
    long = BudgetForcing(
        max_thinking_tokens=40, min_thinking_tokens=24, max_waits=3, max_answer_tokens=4
    )
    cut = asyncio.run(short.run(client, requests))[0]
    forced = asyncio.run(long.run(client, requests))[0]
    assert cut.response.error is None and forced.response.error is None
    # the short budget cuts the model's thinking (it always says more than 6 tokens here)
    assert cut.forced and cut.thinking_tokens == 6
    # the long one thinks at least the minimum, unless it stopped every time it was pushed
    assert forced.thinking_tokens >= 24 or forced.waits == 3
    assert forced.thinking_tokens <= 40
    assert forced.response.reasoning.count("Wait") == forced.waits
    assert forced.thinking_tokens > cut.thinking_tokens
    assert len(forced.response.reasoning) > len(cut.response.reasoning)
