"""The data handoff: assay datasets (every exported format) into TRL's training formats.

Accepted inputs: a list of dicts, a Parquet or JSONL file, a directory of Parquet files (an
`assay` export) or a Hugging Face `save_to_disk` directory. Row formats (TRL's):

- conversational `messages` (+ optional `tools`, a JSON string or a list of schemas);
- `prompt` / `completion` (strings or message lists);
- `prompt` / `chosen` / `rejected` (DPO).

For SFT, `messages` rows become conversational prompt / completion pairs: the prompt is every
message up to the last user (or tool) message, the completion the assistant turns after it.
TRL then masks the prompt out of the loss, which SmolLM2's chat template could not do with
`assistant_only_loss` (it has no `{% generation %}` markers).

Example: `{"id": "r1", "messages": [{"role": "user", "content": "2+2?"},
{"role": "assistant", "content": "4"}]}` -> `{"prompt": [user msg], "completion":
[assistant msg]}`, id `r1`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from assay.curate.errors import AssayError

Rows = list[dict[str, Any]]


def load_rows(source: str | Path | Rows) -> Rows:
    """Rows from a list, a Parquet / JSONL file, a Parquet directory or a datasets directory."""
    if isinstance(source, list):
        return [dict(r) for r in source]
    path = Path(source)
    if not path.exists():
        raise AssayError(f"no dataset at {path}")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            from datasets import load_from_disk

            data = load_from_disk(str(path))
            if hasattr(data, "keys"):  # a DatasetDict: take its train split
                data = data["train"] if "train" in data else data[next(iter(data.keys()))]
            return data.to_list()
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise AssayError(f"{path} holds no Parquet files and is not a datasets directory")
        import pyarrow.parquet as pq

        return [row for f in files for row in pq.read_table(f).to_pylist()]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text()
        if path.suffix == ".json":
            return list(json.loads(text))
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise AssayError(f"{path} line {n}: not JSON ({exc})") from None
        return rows
    raise AssayError(f"{path}: expected .parquet, .jsonl, .json or a directory")


def row_ids(rows: Rows) -> list[str]:
    """Each row's `id`, or `row-<k>` where the dataset has none."""
    return [str(r.get("id") or f"row-{k}") for k, r in enumerate(rows)]


def clean_message(message: dict[str, Any], inline_tool_calls: bool) -> dict[str, Any]:
    """Drop null fields (Arrow structs carry every key); parse JSON-string tool arguments.

    With `inline_tool_calls` (a chat template that ignores `tool_calls`, like SmolLM2's), the
    calls are written into the content as `<tool_call>{...}</tool_call>` so they are trained.
    """
    out = {k: v for k, v in message.items() if v is not None}
    calls = out.pop("tool_calls", None) or []
    if not calls:
        return out
    parsed = []
    for call in calls:
        function = dict(call.get("function") or {})
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                function["arguments"] = json.loads(arguments)
        parsed.append({"type": "function", "function": function})
    if inline_tool_calls:
        text = "".join(
            "<tool_call>\n" + json.dumps(c["function"]) + "\n</tool_call>" for c in parsed
        )
        out["content"] = ((out.get("content") or "") + "\n" + text).strip()
    else:
        out["tool_calls"] = parsed
    return out


def split_messages(messages: list[dict[str, Any]], where: str) -> tuple[list, list]:
    """(prompt, completion): the completion is what follows the last user / tool message."""
    last = max((i for i, m in enumerate(messages) if m.get("role") in ("user", "tool")), default=-1)
    prompt, completion = messages[: last + 1], messages[last + 1 :]
    if not prompt or not any(m.get("role") == "assistant" for m in completion):
        raise AssayError(f"{where}: `messages` needs a user turn followed by an assistant turn")
    return prompt, completion


def sft_rows(rows: Rows, tokenizer: Any = None) -> Rows:
    """Rows in TRL's prompt / completion form (conversational or plain text), plus `tools`."""
    template = str(getattr(tokenizer, "chat_template", "") or "")
    inline = "tool_calls" not in template
    out = []
    for k, row in enumerate(rows):
        where = f"row {k} (id {row.get('id', '?')})"
        tools = row.get("tools")
        if isinstance(tools, str):
            tools = json.loads(tools) if tools.strip() else None
        if row.get("messages") is not None:
            messages = [clean_message(dict(m), inline) for m in row["messages"]]
            prompt, completion = split_messages(messages, where)
            item: dict[str, Any] = {"prompt": prompt, "completion": completion}
        elif row.get("prompt") is not None and row.get("completion") is not None:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                prompt = [clean_message(dict(m), inline) for m in prompt]
                if isinstance(completion, str):
                    completion = [{"role": "assistant", "content": completion}]
            if isinstance(completion, list):
                completion = [clean_message(dict(m), inline) for m in completion]
            item = {"prompt": prompt, "completion": completion}
        else:
            raise AssayError(
                f"{where}: expected `messages` or `prompt` + `completion` columns; "
                f"got {', '.join(row) or 'none'}"
            )
        if tools and not inline:
            item["tools"] = tools
        out.append(item)
    return out


def preference_rows(rows: Rows) -> Rows:
    """Rows in TRL's `prompt` / `chosen` / `rejected` form (strings or message lists)."""
    out = []
    for k, row in enumerate(rows):
        missing = [c for c in ("prompt", "chosen", "rejected") if row.get(c) is None]
        if missing:
            raise AssayError(
                f"row {k} (id {row.get('id', '?')}): a DPO dataset needs `prompt`, `chosen`, "
                f"`rejected`; missing {', '.join(missing)}"
            )
        item = {}
        for c in ("prompt", "chosen", "rejected"):
            value = row[c]
            item[c] = (
                [clean_message(dict(m), True) for m in value] if isinstance(value, list) else value
            )
        out.append(item)
    return out


def split_eval(rows: Rows, ids: list[str], fraction: float, seed: int):
    """(train rows, train ids, eval rows, eval ids): a seeded share held out for evaluation."""
    import random

    if fraction <= 0:
        return rows, ids, [], []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(rows) * fraction))
    held, kept = set(order[:n_eval]), [i for i in range(len(rows)) if i not in set(order[:n_eval])]
    return (
        [rows[i] for i in kept],
        [ids[i] for i in kept],
        [rows[i] for i in sorted(held)],
        [ids[i] for i in sorted(held)],
    )
