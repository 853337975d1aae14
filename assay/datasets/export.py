"""Export curated rows in the three formats TRL trains on, as Parquet, HF datasets and a card.

Formats (TRL's names, columns exactly as its SFT and DPO trainers read them):

- `messages`: conversational SFT, `messages` (list of `{role, content}`; trajectories keep
  `tool_calls` with JSON-string `arguments`, `tool` turns with `tool_call_id` and `name`) and,
  for tool trajectories, `tools` (a JSON string of the OpenAI tool schemas; TRL parses it).
- `prompt_completion`: `prompt` (the messages before the answer) and `completion` (the
  answer turns); with `conversational=False`, plain strings.
- `preference`: `prompt`, `chosen` (a correct sample), `rejected` (an incorrect sample of the
  same problem, paired by `parent_id`).

Input rows are either reasoning traces (`question`, `reasoning`, `final_answer`, `correct`,
`parent_id`; see assay/operators/traces/) or tool trajectories (`messages`, `tools`,
`correct`, `parent_id`; see assay/operators/tools/). Every exported row keeps `id` (and
`chosen_id` / `rejected_id` for pairs) so it can be traced back through the run store.

    >>> table = to_trl(result.to_arrow(), "messages")
    >>> paths = write_export(table, "out/arith-sft", card="# my card")
    >>> datasets.load_dataset("parquet", data_files=str(paths.parquet))["train"]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from assay.curate.errors import AssayError

Format = Literal["messages", "prompt_completion", "preference"]
FORMATS: tuple[str, ...] = ("messages", "prompt_completion", "preference")
TraceStyle = Literal["think", "answer_line", "answer_only"]

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
TOOL_CALL = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
TOOL_MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)


class ExportError(AssayError):
    """Rows that cannot be exported in the asked format (the message names row and column)."""


def trace_text(reasoning: str | None, final_answer: str | None, style: TraceStyle) -> str:
    """The assistant turn of a reasoning trace.

    `think`: `<think>\\nreasoning\\n</think>\\n\\nanswer` (the reasoning-model convention);
    `answer_line`: `reasoning\\nFinal answer: answer`; `answer_only`: the answer alone.
    """
    reasoning = (reasoning or "").strip()
    answer = (final_answer or "").strip()
    if style == "answer_only" or not reasoning:
        return answer
    if style == "think":
        return f"<think>\n{reasoning}\n</think>\n\n{answer}"
    if style == "answer_line":
        return f"{reasoning}\nFinal answer: {answer}"
    raise ExportError(f"unknown trace style {style!r}; use think, answer_line or answer_only")


def to_trl(
    table: pa.Table,
    format: Format,
    *,
    system_prompt: str | None = None,
    prompt_column: str = "question",
    style: TraceStyle = "think",
    conversational: bool = True,
    pairs_per_problem: int = 1,
) -> pa.Table:
    """Rows (traces or tool trajectories) in TRL format `format` (see the module docstring).

    `messages` and `prompt_completion` export the rows whose `correct` is true (all rows when
    there is no `correct` column); `preference` pairs up to `pairs_per_problem` correct
    samples with incorrect ones of the same `parent_id` (problems lacking either are left
    out).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    rows = table.to_pylist()
    kind = _kind(table.column_names)
    convs = [
        _conversation(row, i, kind, system_prompt, prompt_column, style)
        for i, row in enumerate(rows)
    ]
    if format == "preference":
        return _preference(rows, convs, kind, conversational, pairs_per_problem)
    keep = [i for i, row in enumerate(rows) if row.get("correct", True) is not False]
    out: dict[str, list[Any]] = {"id": [str(rows[i]["id"]) for i in keep]}
    if format == "messages":
        out["messages"] = [convs[i][0] + convs[i][1] for i in keep]
    else:
        out["prompt"] = [_maybe_text(convs[i][0], conversational) for i in keep]
        out["completion"] = [_maybe_text(convs[i][1], conversational) for i in keep]
    if kind == "trajectory":
        out["tools"] = [_tools_json(rows[i], i) for i in keep]
    return _table(out, kind, conversational)


def _kind(columns: list[str]) -> str:
    if "messages" in columns:
        return "trajectory"
    if "final_answer" in columns:
        return "trace"
    raise ExportError(
        "cannot tell what these rows are: traces need `question`, `reasoning` and "
        "`final_answer` (ReasoningTraces), trajectories need `messages` (ToolRollouts); "
        f"got columns: {', '.join(columns)}"
    )


def _conversation(
    row: dict[str, Any],
    index: int,
    kind: str,
    system_prompt: str | None,
    prompt_column: str,
    style: TraceStyle,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt turns, answer turns) of one row."""
    where = f"row {index} (id {row.get('id')!r})"
    if kind == "trace":
        question = row.get(prompt_column)
        if not isinstance(question, str) or not question:
            raise ExportError(f"{where}: column {prompt_column!r} is empty or not a string")
        prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt.append({"role": "user", "content": question})
        text = trace_text(row.get("reasoning"), row.get("final_answer"), style)
        return prompt, [{"role": "assistant", "content": text}]
    messages = row.get("messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise ExportError(f"{where}: column 'messages' is not valid JSON: {exc}") from exc
    if not isinstance(messages, list) or not messages:
        raise ExportError(f"{where}: column 'messages' is empty or not a list of messages")
    turns = [_tool_message(m, where, k) for k, m in enumerate(messages)]
    # the prompt ends with the last user turn before the first assistant turn
    first_answer = next((k for k, m in enumerate(turns) if m["role"] == "assistant"), None)
    if first_answer is None or first_answer == 0:
        raise ExportError(f"{where}: 'messages' needs prompt turns followed by an assistant turn")
    if system_prompt and turns[0]["role"] != "system":
        turns.insert(0, _tool_message({"role": "system", "content": system_prompt}, where, 0))
        first_answer += 1
    return turns[:first_answer], turns[first_answer:]


def _tool_message(message: Any, where: str, k: int) -> dict[str, Any]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ExportError(f"{where}: messages[{k}] has no string 'role'")
    calls = []
    for j, call in enumerate(message.get("tool_calls") or []):
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if not isinstance(args, str):  # Arrow cannot hold mixed-type argument objects
            args = json.dumps(args if args is not None else {}, ensure_ascii=False)
        else:
            try:
                json.loads(args)
            except json.JSONDecodeError:
                raise ExportError(
                    f"{where}: messages[{k}].tool_calls[{j}].function.arguments is not JSON"
                ) from None
        calls.append(
            {
                "id": call.get("id") or f"call_{k}_{j}",
                "type": call.get("type") or "function",
                "function": {"name": fn.get("name"), "arguments": args},
            }
        )
    return {
        "role": message["role"],
        "content": message.get("content") or "",
        "tool_calls": calls or None,
        "tool_call_id": message.get("tool_call_id"),
        "name": message.get("name"),
    }


def _tools_json(row: dict[str, Any], index: int) -> str | None:
    tools = row.get("tools")
    if tools is None or isinstance(tools, str):
        if isinstance(tools, str):
            try:
                json.loads(tools)
            except json.JSONDecodeError as exc:
                raise ExportError(
                    f"row {index} (id {row.get('id')!r}): column 'tools' is not valid JSON: {exc}"
                ) from exc
        return tools
    return json.dumps(tools, ensure_ascii=False)


def _maybe_text(turns: list[dict[str, Any]], conversational: bool) -> Any:
    if conversational:
        return turns
    return "\n\n".join(t["content"] for t in turns if t.get("content"))


def _preference(
    rows: list[dict[str, Any]],
    convs: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    kind: str,
    conversational: bool,
    pairs_per_problem: int,
) -> pa.Table:
    if "correct" not in (rows[0] if rows else {"correct": None}):
        raise ExportError("preference pairs need a boolean `correct` column")
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, row in enumerate(rows):
        problem = str(row.get("parent_id") or row["id"])
        good, bad = groups.setdefault(problem, ([], []))
        (good if row.get("correct") else bad).append(i)
    out: dict[str, list[Any]] = {
        "id": [],
        "chosen_id": [],
        "rejected_id": [],
        "prompt": [],
        "chosen": [],
        "rejected": [],
    }
    if kind == "trajectory":
        out["tools"] = []
    for problem, (good, bad) in groups.items():
        # shortest correct against the first incorrect: the clearest contrast per problem
        good = sorted(good, key=lambda i: _length(convs[i][1]))
        for k, (g, b) in enumerate(zip(good, bad, strict=False)):
            if k >= pairs_per_problem:
                break
            out["id"].append(f"{problem}/pair{k}")
            out["chosen_id"].append(str(rows[g]["id"]))
            out["rejected_id"].append(str(rows[b]["id"]))
            out["prompt"].append(_maybe_text(convs[g][0], conversational))
            out["chosen"].append(_maybe_text(convs[g][1], conversational))
            out["rejected"].append(_maybe_text(convs[b][1], conversational))
            if kind == "trajectory":
                out["tools"].append(_tools_json(rows[g], g))
    return _table(out, kind, conversational)


def _length(turns: Iterable[dict[str, Any]]) -> int:
    return sum(len(t.get("content") or "") for t in turns)


def _table(columns: dict[str, list[Any]], kind: str, conversational: bool) -> pa.Table:
    turn = pa.list_(TOOL_MESSAGE if kind == "trajectory" else MESSAGE)
    types: dict[str, pa.DataType] = {"tools": pa.string()}
    for name in ("messages", "prompt", "completion", "chosen", "rejected"):
        types[name] = turn if conversational or name == "messages" else pa.string()
    arrays = {}
    for name, values in columns.items():
        arrays[name] = pa.array(values, types.get(name, pa.string()))
    return pa.table(arrays)


@dataclass
class ExportPaths:
    """Where one export went: the folder, its Parquet file, its card and the HF dataset."""

    root: Path
    parquet: Path
    card: Path | None
    hf: Path | None
    rows: int


def write_export(
    table: pa.Table, out_dir: str | Path, *, card: str | None = None, save_hf: bool = True
) -> ExportPaths:
    """Write `data/train-00000-of-00001.parquet`, `README.md` (the card) and `hf/`.

    The folder loads with `datasets.load_dataset("parquet", data_files=...)`, with
    `datasets.load_dataset(out_dir)` (the card's header names the data files) and, from
    `hf/`, with `datasets.load_from_disk`.
    """
    if table.num_rows == 0:
        raise ExportError(f"nothing to export to {str(out_dir)!r}: the table has no rows")
    root = Path(out_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    parquet = root / "data" / "train-00000-of-00001.parquet"
    tmp = parquet.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(parquet)
    card_path = None
    if card is not None:
        card_path = root / "README.md"
        card_path.write_text(card, encoding="utf-8")
    hf = None
    if save_hf:
        import datasets

        hf = root / "hf"
        datasets.Dataset(table).save_to_disk(str(hf))
    return ExportPaths(root=root, parquet=parquet, card=card_path, hf=hf, rows=table.num_rows)
