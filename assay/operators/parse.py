"""Parse steps over a generation column: structured JSON, tool calls, reasoning, regex.

Parsing never changes a request, so changing a parse step re-parses the stored responses
without a new request (the cache key covers only what changes the answer).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, PrivateAttr, ValidationError, field_validator

from assay.curate.llm.client import LLMClient, LLMSettings
from assay.curate.llm.litellm_backend import split_reasoning
from assay.curate.registry import register
from assay.curate.stage import AsyncStage, Map, Outcome, Stage, split_by_mask
from assay.operators.generate import schema_of
from assay.operators.jsontext import extract_json, json_candidates
from assay.operators.reask import REASK, reask, with_answers  # noqa: F401 (REASK re-exported)

# above this many rows, validation runs in a worker thread so the event loop keeps
# serving other stages' requests meanwhile (validation is pure CPU)
VALIDATE_INLINE_UP_TO = 64


@register
class ParseStructured(AsyncStage):
    """Parse a JSON answer, validate it against a schema, and re-ask the model on failure.

    `output_schema` is a pydantic model class or a JSON schema (checked once, when the
    stage is built). The JSON is pulled out of code fences and prose and repaired (see
    `jsontext`); when an answer holds several JSON values, the first that validates wins.
    An answer cut at max_tokens (`<column>_finish_reason` "length") is never repaired: only
    whole JSON in it counts, else it is re-asked like any invalid answer.
    A row that still fails is re-asked up to `max_reasks` times (see `reask`): the original
    prompt, the bad answer and the error, sent with the row's own generation parameters
    and `response_format` (`<column>_request`, from Generate) through the row's model
    settings, or through `llm` when given. Once a re-ask validates, the row's text columns
    hold that answer. Rows that fail after every re-ask go to the rejects with the
    validation error as reason. For providers with structured output, also pass the
    schema to `Generate(response_format=...)`.

    Input columns: `column` (string), `<column>_finish_reason` (optional), `<column>_messages`
    and `<column>_request` (JSON, optional: without them a re-ask needs `llm` and sends only
    the conversation).
    Output columns: `output_column` (the validated value as JSON text),
    `<output_column>_reasks` (re-asks the row needed) and, with `expand=True`, one column
    per top-level field of an object; `<column>` and its `_reasoning`, `_tool_calls`,
    `_finish_reason` replaced by a re-ask's answer, its tokens and cost added.
    Rejects: "invalid structured output: <error>".

    Example:

        class Answer(BaseModel):
            city: str
            population: int

        ParseStructured(column="generation", output_schema=Answer, max_reasks=2)
        # 'Sure: ```json {"city": "Oslo", "population": 700000,} ```'
        #   -> parsed='{"city": "Oslo", "population": 700000}', city="Oslo", population=700000
    """

    column: str = "generation"
    output_schema: dict[str, Any]
    output_column: str = "parsed"
    expand: bool = True
    max_reasks: int = 2
    llm: LLMSettings | None = None

    _model: type[BaseModel] | None = PrivateAttr(default=None)
    _validator: Any = PrivateAttr(default=None)
    _client: LLMClient | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        schema = data.get("output_schema")
        model = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
        super().__init__(**data)
        self._model = model
        if model is None:
            checker = jsonschema.validators.validator_for(self.output_schema)
            try:
                checker.check_schema(self.output_schema)
            except jsonschema.SchemaError as exc:
                raise ValueError(
                    f"output_schema is not a valid JSON schema: {exc.message}"
                ) from exc
            self._validator = checker(self.output_schema)

    @field_validator("output_schema", mode="before")
    @classmethod
    def _schema(cls, value: Any) -> Any:
        return schema_of(value)

    def input_columns(self) -> list[str]:
        return [self.column]

    def use_client(self, client: LLMClient) -> ParseStructured:
        self._client = client
        return self

    def validate_text(self, text: str | None, cut: bool = False) -> tuple[Any, str | None]:
        """(value, None) when valid, else (None, the reason). `cut`: the answer ended at
        max_tokens (finish_reason "length"), so only JSON that is whole counts: a repaired
        one would be a value the model never finished writing."""
        kind = self.output_schema.get("type") if isinstance(self.output_schema, dict) else None
        try:
            prefer = kind if kind in ("object", "array") else None
            candidates = json_candidates(text, prefer, repair=not cut)
        except ValueError as exc:
            return None, str(exc)
        first_error: str | None = None
        for value in candidates:
            checked, error = self._check(value)
            if error is None:
                return checked, None
            first_error = first_error or error
        return None, first_error

    def _check(self, value: Any) -> tuple[Any, str | None]:
        if self._model is not None:
            try:
                return self._model.model_validate(value).model_dump(mode="json"), None
            except ValidationError as exc:
                return None, _short_validation(exc)
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is None:
            return value, None
        path = "/".join(str(p) for p in error.absolute_path)
        return None, f"schema violation at {path or 'top level'}: {error.message}"

    async def aprocess(self, table: pa.Table) -> pa.Table | Outcome:
        texts = table[self.column].to_pylist()
        finish = f"{self.column}_finish_reason"
        reasons = table[finish].to_pylist() if finish in table.column_names else [None] * len(texts)
        cuts = [r == "length" for r in reasons]

        def validate_all() -> list[tuple[Any, str | None]]:
            return [self.validate_text(t, c) for t, c in zip(texts, cuts, strict=True)]

        if len(texts) > VALIDATE_INLINE_UP_TO:
            results = await asyncio.to_thread(validate_all)
        else:
            results = validate_all()
        counts = [0] * len(results)
        out = table
        if self.max_reasks > 0 and any(err is not None for _, err in results):
            outcome = await reask(
                table,
                self.column,
                results,
                validate=self.validate_text,
                schema=self.output_schema,
                max_reasks=self.max_reasks,
                llm=self.llm,
                client=self._client,
            )
            results, counts = outcome.results, outcome.counts
            out = with_answers(out, self.column, outcome)
        values = [v for v, _ in results]
        ok = pa.array([err is None for _, err in results])
        parsed = pa.array(
            [json.dumps(v, ensure_ascii=False) if e is None else None for v, e in results],
            pa.string(),
        )
        out = _set(out, self.output_column, parsed)
        out = _set(out, f"{self.output_column}_reasks", pa.array(counts, pa.int32()))
        if self.expand:
            for name, column in _expand(values, self.output_schema).items():
                out = _set(out, name, column)
        reasons = pa.array([f"invalid structured output: {e}" for _, e in results])
        return split_by_mask(self.name, out, ok, reasons)


@register
class ParseToolCalls(Map):
    """Normalise tool calls into one column: the provider's, or `<tool_call>` JSON in text.

    Input columns: `<column>_tool_calls` (JSON, from Generate) and/or `column` (text with
    `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, Hermes/Qwen style).
    Output columns: `output_column`: list of {name: string, arguments: string (JSON)};
    empty when the model called no tool.

    Example: `'<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'` ->
    `[{"name": "add", "arguments": '{"a": 1}'}]`.
    """

    column: str = "generation"
    output_column: str = "tool_calls"

    def map(self, table: pa.Table) -> pa.Table:
        native_col = f"{self.column}_tool_calls"
        native = (
            table[native_col].to_pylist()
            if native_col in table.column_names
            else [None] * table.num_rows
        )
        texts = (
            table[self.column].to_pylist()
            if self.column in table.column_names
            else [None] * table.num_rows
        )
        calls = [
            _native_calls(n) if n else _text_calls(t) for n, t in zip(native, texts, strict=True)
        ]
        kind = pa.list_(pa.struct([("name", pa.string()), ("arguments", pa.string())]))
        return _set(table, self.output_column, pa.array(calls, kind))


TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(</tool_call>|$)", re.DOTALL)


def _native_calls(blob: str) -> list[dict[str, str]]:
    out = []
    for call in json.loads(blob):
        fn = call.get("function", call)
        args = fn.get("arguments")
        out.append(
            {
                "name": fn.get("name"),
                "arguments": args if isinstance(args, str) else json.dumps(args),
            }
        )
    return out


def _text_calls(text: str | None) -> list[dict[str, str]]:
    out = []
    for block, closed in TOOL_CALL.findall(text or ""):
        try:
            # a block left open is where the answer was cut (max_tokens): only whole JSON
            # counts there; repairing it would invent the end of the call's arguments
            value = extract_json(block) if closed else json.loads(block)
        except ValueError:
            continue
        if isinstance(value, dict) and "name" in value:
            args = value.get("arguments", value.get("parameters", {}))
            out.append({"name": str(value["name"]), "arguments": json.dumps(args)})
    return out


@register
class ParseReasoning(Map):
    """Split an answer from its reasoning: `<think>` blocks (or the provider's reasoning).

    Input columns: `column` (string), `<column>_reasoning` if present.
    Output columns: `answer_column` (text without reasoning), `reasoning_column`.

    Example: `"<think>2+2 is 4</think>The answer is 4."` -> answer "The answer is 4.",
    reasoning "2+2 is 4".
    """

    column: str = "generation"
    answer_column: str = "answer"
    reasoning_column: str = "reasoning"

    def input_columns(self) -> list[str]:
        return [self.column]

    def map(self, table: pa.Table) -> pa.Table:
        texts = table[self.column].to_pylist()
        given_col = f"{self.column}_reasoning"
        given = (
            table[given_col].to_pylist() if given_col in table.column_names else [None] * len(texts)
        )
        split = [split_reasoning(t, g) for t, g in zip(texts, given, strict=True)]
        table = _set(table, self.answer_column, pa.array([a for a, _ in split], pa.string()))
        return _set(table, self.reasoning_column, pa.array([r for _, r in split], pa.string()))


@register
class ParseRegex(Stage):
    """Pull named groups of a regular expression out of a text column into columns.

    The pattern is RE2 syntax (Arrow's engine: no look-around) and `.` matches newlines.

    Input columns: `column` (string). Output columns: one string column per named group.
    Rejects (with `reject_unmatched=True`): "no match for /pattern/".

    Example: `ParseRegex(column="generation", pattern=r"Answer:\\s*(?P<answer>-?\\d+)")`
    turns `"... Answer: 42"` into `answer="42"`.
    """

    column: str = "generation"
    pattern: str
    reject_unmatched: bool = True

    def input_columns(self) -> list[str]:
        return [self.column]

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        regex = re.compile(self.pattern, re.DOTALL)
        names = list(regex.groupindex)
        if not names:
            raise ValueError(f"pattern {self.pattern!r} has no named group (?P<name>...)")
        # Arrow runs RE2 (no look-around); (?s) makes `.` cross newlines as re.DOTALL does
        groups = pc.extract_regex(
            pc.fill_null(table[self.column], ""), pattern="(?s)" + self.pattern
        )
        matched = pc.is_valid(groups)
        for name in names:
            table = _set(table, name, pc.struct_field(groups, name))
        if not self.reject_unmatched:
            return table
        return split_by_mask(self.name, table, matched, f"no match for /{self.pattern}/")


def _short_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _expand(values: list[Any], schema: dict[str, Any]) -> dict[str, pa.Array]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not props:
        return {}
    out: dict[str, pa.Array] = {}
    for name in props:
        column = [v.get(name) if isinstance(v, dict) else None for v in values]
        try:
            out[name] = pa.array(column)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            out[name] = pa.array(
                [None if c is None else json.dumps(c) for c in column], pa.string()
            )
    return out


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
