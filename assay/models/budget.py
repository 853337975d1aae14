"""Thinking budgets: a maximum thinking length and s1-style budget forcing.

Budget forcing (Muennighoff et al., 2025, "s1: Simple test-time scaling") controls how long
a model thinks by editing its output while it decodes: when the model stops thinking before
`min_thinking_tokens`, the stop is suppressed by appending "Wait" and decoding continues
(at most `max_waits` times); when it reaches `max_thinking_tokens`, thinking is cut and the
end-of-thinking marker appended, so the model has to answer.

It runs as rounds of ordinary chat requests through the LLM client (rate limits, retries
and the request cache apply, so a resumed run pays nothing for finished rounds). Each round
continues the assistant's partial answer: the request ends with an assistant message and
sets `continue_final_message`, which the local backend (`local/...`) and vLLM's
OpenAI-compatible server honour (vLLM also needs `add_generation_prompt: false`, sent too).
Providers that cannot continue a message are not supported.

    forcing = BudgetForcing(max_thinking_tokens=128, min_thinking_tokens=32,
                            think_end="Final answer:", answer_prefix=" ")
    results = await forcing.run(client, requests)   # one BudgetedResponse per request
    results[0].response.reasoning, results[0].response.text, results[0].thinking_tokens

For reasoning models with `<think>` blocks use `think_start="<think>\\n"`, `think_end="</think>"`,
`answer_prefix="\\n\\n"`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from assay.curate.llm.types import ChatRequest, ChatResponse

if TYPE_CHECKING:
    from assay.curate.llm.client import LLMClient

CONTINUE = "continue_final_message"


class BudgetForcing(BaseModel):
    """How long a model may (and must) think, in generated tokens.

    `max_thinking_tokens`: the most thinking tokens; past it the thinking is cut and
    `think_end` appended (the s1 "end-of-thinking" forcing). `min_thinking_tokens`: an
    earlier stop gets `wait` appended and decoding continues, up to `max_waits` times.
    `think_start`: text that opens the assistant's answer (e.g. "<think>\\n"); `think_end`:
    the marker that closes thinking, also the stop string of the thinking rounds.
    `answer_prefix`: text after the marker; the answer round generates at most
    `max_answer_tokens`, stopping at `answer_stop`.
    """

    model_config = ConfigDict(extra="forbid")

    max_thinking_tokens: int = Field(256, ge=1)
    min_thinking_tokens: int = Field(0, ge=0)
    max_waits: int = Field(2, ge=0)
    wait: str = "Wait"
    think_start: str = ""
    think_end: str = "Final answer:"
    answer_prefix: str = " "
    max_answer_tokens: int = Field(24, ge=1)
    answer_stop: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> BudgetForcing:
        if self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"min_thinking_tokens ({self.min_thinking_tokens}) exceeds "
                f"max_thinking_tokens ({self.max_thinking_tokens})"
            )
        if not self.think_end:
            raise ValueError("think_end (the end-of-thinking marker) may not be empty")
        return self

    async def run(self, client: LLMClient, requests: list[ChatRequest]) -> list[BudgetedResponse]:
        """Think, force, then answer, for every request; results in the order given."""
        states = [_State(r) for r in requests]
        while True:
            thinking = [s for s in states if s.phase == "think"]
            if not thinking:
                break
            asks = [self._thinking_request(s) for s in thinking]
            for state, response in zip(thinking, await client.complete_many(asks), strict=True):
                self._after_thinking(state, response)
        answering = [s for s in states if s.phase == "answer"]
        asks = [self._answer_request(s) for s in answering]
        for state, response in zip(answering, await client.complete_many(asks), strict=True):
            state.add(response)
            state.answer = (response.text or "").strip() if response.error is None else ""
            state.phase = "failed" if response.error is not None else "done"
            state.error = response.error
        return [s.result() for s in states]

    # -- rounds ---------------------------------------------------------------------------

    def _continue(self, state: _State, prefix: str, **params: Any) -> ChatRequest:
        request = state.request
        messages = (*request.messages, {"role": "assistant", "content": prefix})
        merged = {**request.params, **params, CONTINUE: True, "add_generation_prompt": False}
        return replace(request, messages=messages, params=merged)

    def _thinking_request(self, state: _State) -> ChatRequest:
        left = self.max_thinking_tokens - state.thinking_tokens
        stop = [self.think_end, *_stops(state.request.params.get("stop"))]
        return self._continue(state, self.think_start + state.thinking, max_tokens=left, stop=stop)

    def _answer_request(self, state: _State) -> ChatRequest:
        prefix = (
            f"{self.think_start}{state.thinking.rstrip()}\n{self.think_end}{self.answer_prefix}"
        )
        stop = [*self.answer_stop, *_stops(state.request.params.get("stop"))]
        params: dict[str, Any] = {"max_tokens": self.max_answer_tokens}
        if stop:
            params["stop"] = stop
        return self._continue(state, prefix, **params)

    def _after_thinking(self, state: _State, response: ChatResponse) -> None:
        state.add(response)
        if response.error is not None:
            state.phase, state.error = "failed", response.error
            return
        state.thinking += response.text or ""
        state.thinking_tokens += response.output_tokens
        if response.finish_reason == "length" or state.thinking_tokens >= self.max_thinking_tokens:
            state.forced = True  # over budget: the answer is forced
            state.phase = "answer"
        elif state.thinking_tokens < self.min_thinking_tokens and state.waits < self.max_waits:
            state.thinking = f"{state.thinking.rstrip()}\n{self.wait}"
            state.waits += 1
        else:
            state.phase = "answer"


def _stops(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class BudgetedResponse:
    """One request's outcome: `response.reasoning` is the thinking (with any inserted "Wait"),
    `response.text` the answer; usage is summed over the rounds."""

    response: ChatResponse
    thinking_tokens: int
    waits: int
    forced: bool
    rounds: int


class _State:
    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.phase = "think"
        self.thinking = ""
        self.thinking_tokens = 0
        self.waits = 0
        self.forced = False
        self.answer = ""
        self.error: str | None = None
        self.rounds = 0
        self.usage = ChatResponse(text=None, cached=True)  # cached: every round was

    def add(self, response: ChatResponse) -> None:
        self.rounds += 1
        u = self.usage
        u.input_tokens += response.input_tokens
        u.output_tokens += response.output_tokens
        u.cost += response.cost
        u.latency_s += response.latency_s
        u.cached = u.cached and response.cached

    def result(self) -> BudgetedResponse:
        u = self.usage
        response = ChatResponse(
            text=self.answer if self.error is None else None,
            reasoning=self.thinking.strip() or None,
            finish_reason="length" if self.forced else "stop",
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cost=u.cost,
            latency_s=u.latency_s,
            cached=u.cached,
            error=self.error,
        )
        return BudgetedResponse(
            response, self.thinking_tokens, self.waits, self.forced, self.rounds
        )


def split_prefill(
    messages: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[list[dict[str, Any]], str]:
    """(messages to render, text to append after the generation prompt).

    With `continue_final_message` and a final assistant message, that message is taken off
    and its content returned, so the model continues it instead of starting a new turn.
    """
    if params.get(CONTINUE) and messages and messages[-1].get("role") == "assistant":
        return messages[:-1], str(messages[-1].get("content") or "")
    return messages, ""
