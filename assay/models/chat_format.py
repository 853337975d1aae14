"""Chat prompts in, tool calls out: the model-format side of the local backend.

`render_prompt` applies the model's chat template (with `tools` when the template knows
them; otherwise the tool specs go into the system prompt in the Hermes / SmolLM2 format).
`parse_tool_calls` turns the `<tool_call>...</tool_call>` blocks (a JSON object or a list of
them, the format SmolLM2 and Qwen/Hermes-style models emit) into OpenAI-style `tool_calls`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from assay.curate.llm.types import ChatResponse

TOOL_SYSTEM_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible "
    "functions. Based on the question, you will need to make one or more function/tool calls "
    "to achieve the purpose. You have access to the following tools:\n<tools>{tools}</tools>\n\n"
    "The output MUST strictly adhere to the following format:\n"
    '<tool_call>[{{"name": "func_name1", "arguments": {{"argument1": "value1"}}}}]</tool_call>'
)

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def render_prompt(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> str:
    """The prompt text for a chat, ending where the assistant's answer starts."""
    template = tokenizer.chat_template or ""
    native_tools = "tools" in template
    messages = [_plain_message(m, keep_tool_calls=native_tools) for m in messages]
    tools = shown_tools(tools) if tools else tools
    if tools and not native_tools:
        specs = json.dumps([t.get("function", t) for t in tools], ensure_ascii=False)
        tool_prompt = TOOL_SYSTEM_PROMPT.format(tools=specs)
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{tool_prompt}"}
        else:
            messages.insert(0, {"role": "system", "content": tool_prompt})
    kwargs: dict[str, Any] = {"tools": tools} if tools and native_tools else {}
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **kwargs
    )


def shown_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as the prompt shows them: without string `pattern`s, which are grammars for
    the decoder (a schema-derived SQL pattern runs to thousands of characters), not text a
    model reads well. The tool-call grammar still enforces them."""

    def strip(value: Any) -> Any:
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, dict):
            # a parameter named "pattern" (a schema, not a string) stays
            return {
                k: strip(v) for k, v in value.items() if not (k == "pattern" and isinstance(v, str))
            }
        return value

    return [strip(t) for t in tools]


def _plain_message(message: dict[str, Any], keep_tool_calls: bool) -> dict[str, Any]:
    """A message a plain chat template can render: string content, tool calls as text."""
    out = dict(message)
    content = out.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    calls = out.get("tool_calls")
    if calls and not keep_tool_calls:
        payload = [
            {"name": c["function"]["name"], "arguments": _loads(c["function"].get("arguments"))}
            for c in calls
        ]
        content = (content or "") + f"<tool_call>{json.dumps(payload)}</tool_call>"
        out.pop("tool_calls")
    out["content"] = content or ""
    return out


def _loads(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return arguments
    return arguments


def parse_tool_calls(
    text: str, truncated: bool = False
) -> tuple[str | None, list[dict[str, Any]] | None]:
    """Split generated text into (content, OpenAI-style tool_calls or None).

    `truncated`: the generation was cut at its token budget. Then a `<tool_call>` block that
    is not whole JSON is the cut one, and no calls are returned at all (the calls before
    the cut are not the model's whole answer); without it, unparseable blocks are skipped.
    JSON is never repaired here, so a cut call is never read as a call with cut arguments.
    """
    calls: list[dict[str, Any]] = []
    for block in _TOOL_CALL_BLOCK.findall(text):
        found = _calls_in(block.strip())
        if truncated and not found and not _is_json(block):
            return text, None
        calls.extend(found)
    content = _TOOL_CALL_BLOCK.sub("", text).strip() if calls else text
    if not calls:
        stripped = text.strip()
        if stripped.startswith(("{", "[")):
            calls = _calls_in(stripped)
            if calls:
                content = ""
    if not calls:
        return text, None
    tool_calls = [
        {
            "id": "call_" + hashlib.sha1(f"{i}:{json.dumps(c)}".encode()).hexdigest()[:16],
            "type": "function",
            "function": {
                "name": c["name"],
                "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False),
            },
        }
        for i, c in enumerate(calls)
    ]
    return (content or None), tool_calls


def _is_json(block: str) -> bool:
    try:
        json.loads(block)
    except (json.JSONDecodeError, RecursionError):
        return False
    return True


def _calls_in(block: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(block)
    except (json.JSONDecodeError, RecursionError):
        return []
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            arguments = item.get("arguments", item.get("parameters", {}))
            calls.append({"name": item["name"], "arguments": _loads(arguments)})
    return calls


def tool_call_schema(
    tools: list[dict[str, Any]],
    tool_choice: str | dict[str, Any] | None,
    parallel: bool = True,
) -> dict[str, Any] | None:
    """A JSON schema forcing a list of tool calls, for `tool_choice` "required", a function
    (`{"type": "function", "function": {"name": ...}}`) or OpenAI's allowed tools in mode
    "required" (`{"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools":
    [{"type": "function", "function": {"name": ...}}, ...]}}`: a call of one of those, while
    the prompt still shows every tool).

    Returns None for "auto", "none", allowed tools in mode "auto" (not enforced: the model
    decides and its output is parsed) or no choice. The constrained answer is a bare JSON list
    `[{"name": ..., "arguments": {...}}]`, which `parse_tool_calls` reads like a `<tool_call>`
    block. `parallel=False` (OpenAI's `parallel_tool_calls: false`) allows exactly one call.
    """
    if tool_choice in (None, "auto", "none"):
        return None
    functions = [t.get("function", t) for t in tools]
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "allowed_tools":
        allowed = tool_choice.get("allowed_tools") or {}
        if allowed.get("mode", "auto") != "required":
            return None
        wanted_names = {t.get("function", t).get("name") for t in allowed.get("tools") or []}
        functions = [f for f in functions if f.get("name") in wanted_names]
        if not functions:
            raise ValueError(
                f"tool_choice allows {sorted(map(str, wanted_names))}, none of which is "
                "among the tools"
            )
    elif isinstance(tool_choice, dict):
        wanted = tool_choice.get("function", tool_choice).get("name")
        functions = [f for f in functions if f.get("name") == wanted]
        if not functions:
            raise ValueError(f"tool_choice names {wanted!r}, which is not among the tools")
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in functions
    ]
    call = options[0] if len(options) == 1 else {"anyOf": options}
    schema: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def chat_response(
    text: str,
    finish_reason: str,
    parse_tools: bool,
    input_tokens: int,
    output_tokens: int,
    latency_s: float,
) -> ChatResponse:
    """A local generation as a `ChatResponse`: with `parse_tools` (the request offered tools),
    `<tool_call>` blocks become OpenAI `tool_calls` and the finish reason `"tool_calls"`.

    A generation cut at its budget keeps `finish_reason="length"`: its text is returned as
    generated (a constrained call cut mid-JSON stays an invalid JSON prefix, with no
    `tool_calls`), and calls are returned only when every block in it is whole JSON."""
    answer: str | None = text
    tool_calls = None
    if parse_tools:
        cut = finish_reason == "length"
        answer, tool_calls = parse_tool_calls(text, truncated=cut)
        if tool_calls and not cut:
            finish_reason = "tool_calls"
    return ChatResponse(
        text=answer,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_s=latency_s,
    )


def decoding_format(request: Any) -> dict[str, Any] | None:
    """The format decoding must follow for a `ChatRequest`: its `response_format` (none for
    `{"type": "text"}`), else, when it offers tools, the tool-call schema (`tool_choice`
    "required" or a named function makes the answer a tool call)."""
    response_format = request.response_format
    if response_format and response_format.get("type") == "text":
        response_format = None
    if request.tools and not response_format:
        params = request.params
        response_format = tool_call_schema(
            list(request.tools),
            params.get("tool_choice"),
            params.get("parallel_tool_calls") is not False,
        )
    return response_format
