"""Exports in TRL's formats: they load with `datasets.load_dataset("parquet", ...)` and go
through TRL 1.16's SFT and DPO data preparation (tokenisation with a tiny random model)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from local_tiny_model import build_tiny_model

from assay.datasets.export import ExportError, to_trl, trace_text, write_export


def traces() -> pa.Table:
    """Reasoning-trace rows as ReasoningTraces writes them (kept and rejected samples)."""
    rows = []
    for p, (a, b) in enumerate([(2, 3), (4, 5), (7, 1)]):
        for k, correct in enumerate([True, False, True]):
            got = a + b if correct else a + b + 1
            rows.append(
                {
                    "id": f"add-{p}/s{k}",
                    "parent_id": f"add-{p}",
                    "question": f"What is {a}+{b}?",
                    "reasoning": f"{a} plus {b}" + " is" * k + f" {got}.",
                    "final_answer": str(got),
                    "correct": correct,
                    "pass_rate": 2 / 3,
                }
            )
    rows[-2]["correct"] = True  # add-2 has no incorrect sample: no pair for it
    return pa.Table.from_pylist(rows)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def trajectories() -> pa.Table:
    """Tool trajectories in the ToolRollouts contract (messages with tool calls)."""
    rows = []
    for k, (city, correct) in enumerate([("Paris", True), ("Rome", False)]):
        call = {
            "id": f"c{k}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "days": k})},
        }
        messages = [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {
                "role": "tool",
                "content": '{"temp": 21}',
                "tool_call_id": f"c{k}",
                "name": "get_weather",
            },
            {"role": "assistant", "content": "It is 21 degrees."},
        ]
        rows.append(
            {
                "id": f"w/s{k}",
                "parent_id": "w",
                "messages": messages,
                "tools": json.dumps(TOOLS),
                "correct": correct,
                "reward": float(correct),
            }
        )
    return pa.Table.from_pylist(rows)


def test_trace_formats_keep_correct_rows_and_pair_by_problem() -> None:
    table = traces()
    sft = to_trl(table, "messages", system_prompt="Think, then answer.")
    assert sft.column_names == ["id", "messages"]
    assert sft["id"].to_pylist() == [
        r for r, c in zip(table["id"].to_pylist(), table["correct"].to_pylist(), strict=True) if c
    ]
    first = sft["messages"][0].as_py()
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert first[2]["content"] == "<think>\n2 plus 3 5.\n</think>\n\n5"

    pc_ = to_trl(table, "prompt_completion", style="answer_line")
    assert pc_["completion"][0].as_py() == [
        {"role": "assistant", "content": "2 plus 3 5.\nFinal answer: 5"}
    ]
    plain = to_trl(table, "prompt_completion", conversational=False)
    assert plain["prompt"][0].as_py() == "What is 2+3?"

    pref = to_trl(table, "preference")
    assert pref["id"].to_pylist() == ["add-0/pair0", "add-1/pair0"]  # add-2 has no wrong one
    assert pref["chosen_id"].to_pylist() == ["add-0/s0", "add-1/s0"]
    assert pref["rejected_id"].to_pylist() == ["add-0/s1", "add-1/s1"]
    assert "6" in pref["rejected"][0].as_py()[0]["content"]


def test_trajectory_formats_keep_tool_calls_as_json_strings() -> None:
    sft = to_trl(trajectories(), "messages")
    assert sft.column_names == ["id", "messages", "tools"]
    messages = sft["messages"][0].as_py()
    call = messages[1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 0}
    assert messages[2]["role"] == "tool" and messages[2]["tool_call_id"] == "c0"
    assert json.loads(sft["tools"][0].as_py()) == TOOLS

    pref = to_trl(trajectories(), "preference")
    assert [m["role"] for m in pref["prompt"][0].as_py()] == ["user"]
    assert [m["role"] for m in pref["chosen"][0].as_py()] == ["assistant", "tool", "assistant"]
    assert "Rome" in pref["rejected"][0].as_py()[0]["tool_calls"][0]["function"]["arguments"]


def test_bad_rows_are_named() -> None:
    bad = traces().to_pylist()
    bad[4]["question"] = ""
    with pytest.raises(ExportError, match=r"row 4 \(id 'add-1/s1'\): column 'question'"):
        to_trl(pa.Table.from_pylist(bad), "messages")
    with pytest.raises(ExportError, match="cannot tell what these rows are"):
        to_trl(pa.table({"id": ["a"], "text": ["x"]}), "messages")
    with pytest.raises(ExportError, match="unknown export format"):
        to_trl(traces(), "kto")  # type: ignore[arg-type]
    broken = trajectories().to_pylist()
    broken[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{city: Paris"
    with pytest.raises(ExportError, match=r"messages\[1\].tool_calls\[0\].function.arguments"):
        to_trl(pa.Table.from_pylist(broken), "messages")
    assert trace_text("", "7", "think") == "7"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# a ChatML template that renders tools and tool calls (as Qwen's and Hermes' templates do), so
# the test sees whether the exported structure reaches the tokens
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{{ tools | tojson }}</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}"
    "{%- for c in m['tool_calls'] or [] %}<tool_call>{\"name\": \"{{ c['function']['name'] }}\", "
    "\"arguments\": {{ c['function']['arguments'] }}}</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def _load(paths) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=str(paths.parquet), split="train")


def test_every_export_loads_and_passes_trl_data_preparation(tiny: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = TOOL_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny)
    common = dict(
        output_dir=str(tmp_path / "trainer"),
        use_cpu=True,
        bf16=False,
        report_to=[],
        gradient_checkpointing=False,
        max_length=1024,
        dataset_num_proc=None,
    )
    exports = {
        "trace_messages": to_trl(traces(), "messages"),
        "trace_prompt_completion": to_trl(traces(), "prompt_completion"),
        "trace_plain_prompt_completion": to_trl(
            traces(), "prompt_completion", conversational=False
        ),
        "tool_messages": to_trl(trajectories(), "messages"),
        "tool_prompt_completion": to_trl(trajectories(), "prompt_completion"),
    }
    for name, table in exports.items():
        paths = write_export(table, tmp_path / name, card=f"# {name}\n")
        loaded = _load(paths)
        assert loaded.num_rows == table.num_rows
        assert datasets.load_from_disk(str(paths.hf)).num_rows == table.num_rows
        trainer = SFTTrainer(
            model=model, args=SFTConfig(**common), train_dataset=loaded, processing_class=tokenizer
        )
        prepared = trainer.train_dataset
        assert "input_ids" in prepared.column_names, name
        assert prepared.num_rows == table.num_rows
        if "completion" in table.column_names:  # the prompt is masked out of the loss
            labels = prepared[0]["labels"]
            assert labels[0] == -100 and any(t != -100 for t in labels)
        # the answer text reached the tokens (tool calls rendered, reasoning kept)
        text = tokenizer.decode(prepared[0]["input_ids"])
        if name.startswith("tool"):
            assert '"arguments": {"city": "Paris", "days": 0}' in text and "21 degrees" in text
            assert "<tools>" in text and '"name": "get_weather"' in text  # the tools column
        else:
            assert "2 plus 3" in text

    for name, table in {
        "trace_preference": to_trl(traces(), "preference"),
        "tool_preference": to_trl(trajectories(), "preference"),
    }.items():
        loaded = _load(write_export(table, tmp_path / name, save_hf=False))
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**common),
            train_dataset=loaded,
            processing_class=tokenizer,
        )
        prepared = trainer.train_dataset
        for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
            assert column in prepared.column_names, (name, prepared.column_names)
        assert prepared.num_rows == table.num_rows
        chosen = tokenizer.decode(prepared[0]["chosen_ids"])
        rejected = tokenizer.decode(prepared[0]["rejected_ids"])
        assert ("Paris" if name.startswith("tool") else "5") in chosen
        assert ("Rome" if name.startswith("tool") else "6") in rejected
