"""Re-asking a model whose answer failed validation (used by ParseStructured).

A re-ask is the row's own request again, continued: the original prompt
(`<column>_messages`), the rejected answer, and a user turn with the validation error. It is
sent with the row's generation parameters, `response_format`, tools and sample index
(`<column>_request`, written by Generate) and through the row's own model settings, unless
the stage names an `llm` to re-ask instead. A re-ask request that fails (after the client's
retries) uses up that round; the next round asks again.

Once a re-ask answer validates, the row's text columns (`<column>`, `_reasoning`,
`_tool_calls`, `_finish_reason`) become that answer and its tokens and cost are added to
the row's, so the row is consistent: its text is what its parsed columns came from.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from assay.curate.llm.client import LLMClient, LLMSettings, client_for
from assay.curate.llm.types import ChatRequest, ChatResponse

REASK = (
    "Your previous answer could not be used: {error}\n"
    "Reply with only a JSON value that follows this JSON schema, nothing else:\n{schema}"
)

# (answer text, cut at max_tokens) -> (value, None) or (None, reason)
Validate = Callable[[str | None, bool], tuple[Any, "str | None"]]


@dataclass
class _Row:
    client: LLMClient
    model: str
    base: list[dict[str, Any]]
    origin: dict[str, Any]
    turns: list[tuple[str, str]] = field(default_factory=list)  # (answer, its error)

    def request(self, schema: str) -> ChatRequest:
        messages = list(self.base)
        for answer, error in self.turns:
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": REASK.format(error=error, schema=schema)})
        tools = self.origin.get("tools")
        return ChatRequest(
            model=self.model,
            messages=tuple(messages),
            params=dict(self.origin.get("params") or {}),
            response_format=self.origin.get("response_format"),
            tools=tuple(tools) if tools else None,
            sample_index=int(self.origin.get("sample_index") or 0),
        )


@dataclass
class ReaskResult:
    results: list[tuple[Any, str | None]]
    answers: dict[int, ChatResponse]  # row -> the re-ask answer that validated
    counts: list[int]  # re-asks sent per row
    spent: dict[int, list[float]]  # row -> [input tokens, output tokens, cost] of its re-asks


async def reask(
    table: pa.Table,
    column: str,
    results: list[tuple[Any, str | None]],
    *,
    validate: Validate,
    schema: dict[str, Any],
    max_reasks: int,
    llm: LLMSettings | None,
    client: LLMClient | None = None,
) -> ReaskResult:
    """Re-ask every row whose result has an error, up to `max_reasks` rounds."""
    texts = table[column].to_pylist()
    histories = _column(table, f"{column}_messages")
    origins = _column(table, f"{column}_request")
    schema_text = json.dumps(schema, ensure_ascii=False)
    clients: dict[str, LLMClient] = {}
    rows: dict[int, _Row] = {}
    for i, (_, error) in enumerate(results):
        if error is None:
            continue
        origin = json.loads(origins[i]) if origins[i] else {}
        chosen = _client_for(origin, llm, client, clients)
        if chosen is None:
            continue  # nothing to re-ask with: the row keeps its error
        base = json.loads(histories[i]) if histories[i] else []
        rows[i] = _Row(chosen[0], chosen[1], list(base), origin, [(texts[i] or "", error)])
    answers: dict[int, ChatResponse] = {}
    counts = [0] * len(results)
    spent: dict[int, list[float]] = {}
    for _ in range(max_reasks):
        pending = [i for i in rows if results[i][1] is not None]
        if not pending:
            break
        groups: dict[int, list[int]] = {}
        for i in pending:
            groups.setdefault(id(rows[i].client), []).append(i)
        replies = await asyncio.gather(
            *(
                rows[g[0]].client.complete_many([rows[i].request(schema_text) for i in g])
                for g in groups.values()
            )
        )
        for group, responses in zip(groups.values(), replies, strict=True):
            for i, response in zip(group, responses, strict=True):
                counts[i] += 1
                used = spent.setdefault(i, [0, 0, 0.0])
                used[0] += response.input_tokens
                used[1] += response.output_tokens
                used[2] += response.cost  # what it cost when made, as Generate's column
                last_error = rows[i].turns[-1][1]
                if response.error is not None:
                    results[i] = (None, f"{last_error} (re-ask failed: {response.error})")
                    continue
                value, error = validate(response.text, response.finish_reason == "length")
                results[i] = (value, error)
                if error is None:
                    answers[i] = response
                else:
                    rows[i].turns.append((response.text or "", error))
    return ReaskResult(results, answers, counts, spent)


def _client_for(
    origin: dict[str, Any],
    llm: LLMSettings | None,
    client: LLMClient | None,
    clients: dict[str, LLMClient],
) -> tuple[LLMClient, str] | None:
    """The client and model to re-ask a row with: the stage's, else the row's own."""
    if llm is not None:
        return (client or client_for(llm)), llm.model
    settings = origin.get("settings")
    if not settings:
        return None
    key = json.dumps(settings, sort_keys=True)
    if key not in clients:
        clients[key] = client or client_for(LLMSettings(**settings))
    return clients[key], str(settings["model"])


def with_answers(table: pa.Table, column: str, outcome: ReaskResult) -> pa.Table:
    """The table with each re-asked row's text columns set to the answer that validated,
    and the re-asks' tokens and cost added to the row's."""
    for offset, suffix in enumerate(("_input_tokens", "_output_tokens", "_cost")):
        name = column + suffix
        if name in table.column_names and outcome.spent:
            values = table[name].to_pylist()
            for i, used in outcome.spent.items():
                values[i] = (values[i] or 0) + used[offset]
            table = _set(table, name, pa.array(values, table.schema.field(name).type))
    fields: dict[str, Callable[[ChatResponse], Any]] = {
        column: lambda r: r.text,
        f"{column}_reasoning": lambda r: r.reasoning,
        f"{column}_tool_calls": lambda r: json.dumps(r.tool_calls) if r.tool_calls else None,
        f"{column}_finish_reason": lambda r: r.finish_reason,
    }
    for name, get in fields.items():
        if name in table.column_names:
            values = table[name].to_pylist()
            for i, response in outcome.answers.items():
                values[i] = get(response)
            table = _set(table, name, pa.array(values, table.schema.field(name).type))
    return table


def _column(table: pa.Table, name: str) -> list[Any]:
    if name in table.column_names:
        return table[name].to_pylist()
    return [None] * table.num_rows


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
