"""Generate: one LLM call (or n samples) per row, through the rate-limited, cached client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, PlainSerializer, PrivateAttr, field_validator

from assay.curate.errors import StageError
from assay.curate.llm.stage_client import UsesLLM
from assay.curate.llm.types import ChatRequest, ChatResponse
from assay.curate.registry import register
from assay.curate.stage import ID, PARENT_ID, AsyncStage, Outcome

PromptFn = Annotated[
    Callable[[dict[str, Any]], "str | list[dict[str, Any]]"],
    PlainSerializer(lambda f: f"{f.__module__}.{f.__qualname__}", return_type=str),
]

_TRANSPORT_KWARGS = frozenset(
    {"api_key", "api_base", "base_url", "extra_headers", "headers", "timeout", "metadata", "user"}
)

_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


def schema_of(value: Any) -> dict[str, Any] | None:
    """A JSON schema from a pydantic model class, or the dict itself."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value.model_json_schema()
    raise TypeError(f"expected a pydantic model class or a JSON schema dict, got {value!r}")


@register
class Generate(AsyncStage, UsesLLM):
    """Ask a model once per row (or `n` times) and write its answer into columns.

    The prompt is a Jinja2 template over the row's columns (`prompt`), a Python function of
    the row returning a string or chat messages (`prompt_fn`), or a column of chat messages
    (`messages_column`). Generation parameters come from the stage (`temperature`,
    `max_tokens`, `top_p`, `seed`, `stop`, `generation_kwargs`) and, per row, from
    `params_column` (a struct or JSON object column), which wins.

    Input columns: those the template reads; `messages_column`, `params_column` if set.
    Output columns (with `output_column="generation"`): `generation` (answer text),
    `generation_reasoning` (reasoning_content or `<think>` blocks), `generation_tool_calls`
    (JSON), `generation_finish_reason`, `generation_input_tokens`,
    `generation_output_tokens`, `generation_cost` (what the answer cost when it was made,
    also when it now comes from the cache), `generation_latency_s`, `generation_messages`
    (the prompt as JSON, for re-asks and lineage), `generation_request` (JSON: the
    generation parameters, response_format, tools, sample index and model settings, never
    a key: what a re-ask by ParseStructured sends again); with `n > 1` also `sample_index`
    and `parent_id`, and each row's id becomes `"<id>/s<k>"`.
    Rejects: rows whose request failed after every retry ("llm request failed: ...");
    with `require_all=True` the run stops instead, naming how many rows failed.

    Example:

        Generate(
            model="openai/qwen2.5-7b", api_base="http://127.0.0.1:8000/v1",
            prompt="Answer briefly: {{ question }}", system_prompt="You are terse.",
            temperature=0.7, n=2, rpm=600,
        )
        # {"id": "q1", "question": "2+2?"} -> rows "q1/s0", "q1/s1" with `generation`
    """

    prompt: str | None = None
    prompt_fn: PromptFn | None = None
    messages_column: str | None = None
    system_prompt: str | None = None
    output_column: str = "generation"
    n: int = 1
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    generation_kwargs: dict[str, Any] = {}
    params_column: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    require_all: bool = False

    _template: jinja2.Template | None = PrivateAttr(default=None)
    _system: jinja2.Template | None = PrivateAttr(default=None)

    @field_validator("response_format", mode="before")
    @classmethod
    def _schema(cls, value: Any) -> Any:
        return schema_of(value)

    def model_post_init(self, context: Any) -> None:
        sources = [self.prompt is not None, self.prompt_fn is not None, bool(self.messages_column)]
        if sum(sources) != 1:
            raise ValueError("give exactly one of prompt, prompt_fn or messages_column")
        if self.n < 1:
            raise ValueError("n must be at least 1")
        transport = sorted(set(self.generation_kwargs) & _TRANSPORT_KWARGS)
        if transport:
            # these carry credentials or routing, not generation: they would reach the
            # cache key, the stored request and the run's recorded parameters
            raise ValueError(
                f"generation_kwargs may not set {', '.join(transport)}: put the key in an "
                "environment variable named by api_key_env, the server in api_base"
            )
        if self.prompt is not None:
            self._template = _JINJA.from_string(self.prompt)
        if self.system_prompt is not None:
            self._system = _JINJA.from_string(self.system_prompt)

    @property
    def creates_rows(self) -> bool:  # type: ignore[override]
        return self.n > 1

    def input_columns(self) -> list[str]:
        cols = [c for c in (self.messages_column, self.params_column) if c]
        if self._template is not None:
            from jinja2 import meta

            cols += sorted(meta.find_undeclared_variables(_JINJA.parse(self.prompt or "")))
        return cols

    # ---------------------------------------------------------------------------------

    def messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        if self.messages_column:
            value = row[self.messages_column]
            messages = json.loads(value) if isinstance(value, str) else list(value)
        elif self.prompt_fn is not None:
            value = self.prompt_fn(row)
            messages = [{"role": "user", "content": value}] if isinstance(value, str) else value
        else:
            assert self._template is not None
            messages = [{"role": "user", "content": self._template.render(row)}]
        if self._system is not None and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self._system.render(row)}, *messages]
        return messages

    def params(self, row: dict[str, Any]) -> dict[str, Any]:
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }
        params.update(self.generation_kwargs)
        if self.params_column:
            value = row.get(self.params_column)
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else {}
            params.update(value or {})
        return {k: v for k, v in params.items() if v is not None}

    def requests(self, table: pa.Table) -> list[ChatRequest]:
        """n requests per row: row 0 samples 0..n-1, then row 1, ..."""
        out: list[ChatRequest] = []
        tools = tuple(self.tools) if self.tools else None
        for row in table.to_pylist():
            messages = tuple(self.messages(row))
            params = self.params(row)
            for k in range(self.n):
                out.append(
                    ChatRequest(
                        model=self.model,
                        messages=messages,
                        params=params,
                        response_format=self.response_format,
                        tools=tools,
                        sample_index=k,
                    )
                )
        return out

    async def aprocess(self, table: pa.Table) -> pa.Table | Outcome:
        try:
            requests = self.requests(table)
        except (jinja2.TemplateError, KeyError, ValueError, TypeError) as exc:
            raise StageError(
                self.name, f"cannot build prompts: {type(exc).__name__}: {exc}"
            ) from exc
        responses = await self.client.complete_many(requests)
        failed = [r.error for r in responses if r.error is not None]
        if failed and self.require_all:
            raise StageError(
                self.name,
                f"{len(failed)} of {len(responses)} requests failed after every retry "
                f"(first: {failed[0]}); require_all=True",
            )
        out = self._with_outputs(table, requests, responses)
        if not failed:
            return out
        ok = pa.array([r.error is None for r in responses])
        reasons = pa.array(
            [f"llm request failed: {r.error}" for r in responses if r.error is not None]
        )
        return Outcome(kept=out.filter(ok), rejected=out.filter(pc.invert(ok)), reasons=reasons)

    def _with_outputs(
        self, table: pa.Table, requests: list[ChatRequest], responses: list[ChatResponse]
    ) -> pa.Table:
        if self.n > 1:
            parents = table[ID].combine_chunks()
            take = pa.array([i for i in range(table.num_rows) for _ in range(self.n)], pa.int64())
            table = table.take(take)
            samples = [r.sample_index for r in requests]
            parent_ids = parents.take(take)
            ids = pa.array(
                [f"{p}/s{k}" for p, k in zip(parent_ids.to_pylist(), samples, strict=True)]
            )
            table = _set(table, ID, ids)
            table = _set(table, PARENT_ID, parent_ids)
            table = _set(table, "sample_index", pa.array(samples, pa.int32()))
        o = self.output_column
        # api_key is excluded from the dump: only its variable's name can be recorded
        settings = self.settings().model_dump(mode="json", exclude_defaults=True)
        columns: dict[str, pa.Array] = {
            o: pa.array([r.text for r in responses], pa.string()),
            f"{o}_reasoning": pa.array([r.reasoning for r in responses], pa.string()),
            f"{o}_tool_calls": pa.array(
                [json.dumps(r.tool_calls) if r.tool_calls else None for r in responses],
                pa.string(),
            ),
            f"{o}_finish_reason": pa.array([r.finish_reason for r in responses], pa.string()),
            f"{o}_input_tokens": pa.array([r.input_tokens for r in responses], pa.int64()),
            f"{o}_output_tokens": pa.array([r.output_tokens for r in responses], pa.int64()),
            f"{o}_cost": pa.array([r.cost for r in responses], pa.float64()),
            f"{o}_latency_s": pa.array([r.latency_s for r in responses], pa.float64()),
            f"{o}_messages": pa.array(
                [json.dumps(list(r.messages), ensure_ascii=False) for r in requests], pa.string()
            ),
            f"{o}_request": pa.array([request_record(r, settings) for r in requests], pa.string()),
        }
        for name, values in columns.items():
            table = _set(table, name, values)
        return table


def request_record(request: ChatRequest, settings: dict[str, Any]) -> str:
    """The `<output>_request` value: how to ask this row's model again the same way."""
    record = {
        "settings": settings,
        "params": request.params,
        "response_format": request.response_format,
        "tools": list(request.tools) if request.tools else None,
        "sample_index": request.sample_index,
    }
    return json.dumps(record, ensure_ascii=False, default=str)


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
