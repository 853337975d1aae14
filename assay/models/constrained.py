"""Constrained decoding against a JSON schema, with xgrammar.

Why xgrammar (over outlines-core and lm-format-enforcer): it is the structured-output engine
vLLM, SGLang and TensorRT-LLM ship by default and is actively maintained; it compiles a JSON
schema into a pushdown automaton in milliseconds (outlines-core builds a regex DFA index over
the whole vocabulary per schema, which is slow for nested schemas), it supports the JSON
schema features we need (nested objects, arrays, enums, string lengths, `$ref`), and it fills
a packed token bitmask per row that is applied to a whole batch of logits at once on CPU or
CUDA, so constrained and free rows share one forward pass. It is installed with
`pip install --no-deps xgrammar apache-tvm-ffi` (its `triton` dependency is only for GPU
kernels and is not needed on CPU).

Small models loop on whitespace when a grammar allows any amount of it, so schemas compile
with compact separators (`any_whitespace=False`).

xgrammar 0.2.8 compiles a length-bounded string (`minLength` / `maxLength`) into a character
class that lets raw control characters through, which is not valid JSON; `harden_schema`
rewrites such strings into the equivalent `pattern` over JSON-safe characters.

A constrained row that reaches its token budget before the grammar is complete is truncated:
`finish_reason="length"` and its text is a JSON prefix, never closed or repaired here (closing
it would put values in the answer that the model did not choose, e.g. a string cut to
`"Par"`); callers must treat it as cut (the tool-call parser returns no call for it). A row
whose last budgeted token completes the value ends with `"stop"`, like one that stopped
itself. No budget is reserved for closing the JSON: xgrammar gives no shortest completion
of a grammar state, and a forced close would still be a value the model did not write.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import torch

ResponseFormat = dict[str, Any]


def schema_of(response_format: ResponseFormat) -> dict[str, Any] | None:
    """The JSON schema in an OpenAI-style `response_format` (None means any JSON object).

    Accepts `{"type": "json_schema", "json_schema": {"schema": {...}}}`, `{"type":
    "json_object"}`, and a bare JSON schema.
    """
    kind = response_format.get("type")
    if kind == "json_schema" and "json_schema" in response_format:
        inner = response_format["json_schema"]
        return inner.get("schema", inner) if isinstance(inner, dict) else None
    if kind == "json_object":
        return None
    if kind == "text":
        raise ValueError("response_format type 'text' asks for no constraint")
    return response_format


_STRING_CHAR = '[^"\\\\\\x00-\\x1f]'  # any character JSON allows unescaped in a string


def harden_schema(schema: Any) -> Any:
    """A copy of `schema` with length-bounded strings as patterns (see the module notes)."""
    if isinstance(schema, list):
        return [harden_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: harden_schema(v) for k, v in schema.items()}
    bounded = "minLength" in out or "maxLength" in out
    plain = not any(k in out for k in ("pattern", "format", "enum", "const"))
    if out.get("type") == "string" and bounded and plain:
        low = int(out.pop("minLength", 0))
        high = out.pop("maxLength", None)
        out["pattern"] = f"^{_STRING_CHAR}{{{low},{'' if high is None else int(high)}}}$"
    return out


CACHED_GRAMMARS = 256


class GrammarCompiler:
    """Compiles response formats for one tokenizer; compiled grammars are cached by schema."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise ImportError(
                "constrained decoding (response_format / tool_choice on local models) needs "
                "xgrammar: pip install --no-deps xgrammar apache-tvm-ffi"
            ) from exc

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info, max_threads=2)
        # compiled grammars by schema, the least recently used dropped past CACHED_GRAMMARS:
        # schemas can change per request (a tool argument's pattern made from a query result)
        self._cache: OrderedDict[str, Any] = OrderedDict()

    def compile(self, response_format: ResponseFormat) -> Any:
        """A compiled grammar for the response format (cached)."""
        schema = schema_of(response_format)
        key = json.dumps(schema, sort_keys=True)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            if schema is None:
                compiled = self._compiler.compile_builtin_json_grammar()
            else:
                compiled = self._compiler.compile_json_schema(
                    json.dumps(harden_schema(schema)), any_whitespace=False, strict_mode=True
                )
            self._cache[key] = compiled
            if len(self._cache) > CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return self._cache[key]

    def matcher(self, compiled: Any) -> GrammarState:
        return GrammarState(self._xgr.GrammarMatcher(compiled))


class GrammarState:
    """The grammar position of one generated sequence."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by one token; False if the grammar rejects it."""
        return bool(self.matcher.accept_token(token_id))

    @property
    def finished(self) -> bool:
        """The stop token has been accepted: nothing more may follow."""
        return bool(self.matcher.is_terminated())

    @property
    def complete(self) -> bool:
        """What was accepted so far is a whole value of the grammar (the stop token may
        still be missing): a row cut at its token budget in this state is not truncated."""
        return bool(self.matcher.is_completed())


def mask_logits(logits: torch.Tensor, states: list[GrammarState | None]) -> None:
    """In place: set to -inf every token that the row's grammar forbids (rows with None free)."""
    import xgrammar as xgr

    rows = [i for i, state in enumerate(states) if state is not None and not state.finished]
    if not rows:
        return
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    for i in rows:
        states[i].matcher.fill_next_token_bitmask(bitmask, i)
    if logits.device.type == "cpu":
        xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
    else:
        xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)
