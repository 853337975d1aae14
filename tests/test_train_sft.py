"""SFT plumbing on a tiny random model: data formats, loss masks, LoRA save / load / merge,
registration, the run store, resume, packing, and the no-trainable-token guard."""

from __future__ import annotations

import json

import pytest
import torch
from local_tiny_model import registered_tiny_model

from assay.curate.store import RunStore
from assay.train import data
from assay.train.runner import TrainingSignalError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with registered_tiny_model(tmp_path_factory.mktemp("train-sft")) as root:
        yield root


def qa_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"q{k}",
            "messages": [
                {"role": "user", "content": f"What is {k}+1?", "tool_calls": None},
                {"role": "assistant", "content": f"{k + 1} yes", "tool_calls": None},
            ],
        }
        for k in range(n)
    ]


def test_tool_call_messages_split_into_prompt_and_completion():
    row = {
        "id": "t1",
        "messages": [
            {"role": "user", "content": "Weather in Rome?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    }
                ],
            },
            {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "c1", "name": None},
            {"role": "assistant", "content": "21 degrees"},
        ],
        "tools": json.dumps([{"type": "function", "function": {"name": "get_weather"}}]),
    }
    (out,) = data.sft_rows([row], tokenizer=None)  # no template: tool calls written inline
    assert [m["role"] for m in out["prompt"]] == ["user", "assistant", "tool"]
    assert out["completion"] == [{"role": "assistant", "content": "21 degrees"}]
    call = out["prompt"][1]["content"]
    assert call.startswith("<tool_call>") and '"city": "Rome"' in call
    assert "name" not in out["prompt"][2]  # null struct fields dropped
    with pytest.raises(Exception, match="row 0"):
        data.sft_rows([{"id": "x", "messages": [{"role": "user", "content": "hi"}]}])


def test_prompt_tokens_carry_no_loss_and_eos_is_learned(tiny, tmp_path):
    from assay.train.sft import SFTSettings, build_sft_trainer

    settings = SFTSettings(model="tiny", workspace=str(tmp_path / "ws"), max_length=64)
    rows = qa_rows(3)
    trainer = build_sft_trainer(settings, rows, [], [], tmp_path / "out")
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for i, row in enumerate(rows):
        prompt = tok.apply_chat_template(
            row["messages"][:1], tokenize=False, add_generation_prompt=True
        )
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert (labels[:n_prompt] == -100).all()
        kept = labels[labels != -100]
        assert tok.decode(kept).startswith(f"{i + 1} yes")
        assert tok.eos_token_id in kept.tolist()  # pad == eos, yet the stop token is trained
        assert (ids[n_prompt : n_prompt + len(kept)] == kept).all()


def test_no_trainable_tokens_stops_with_the_setting_to_change(tiny, tmp_path):
    from assay.train.sft import sft

    with pytest.raises(TrainingSignalError, match="max_length"):
        sft(qa_rows(4), model="tiny", workspace=str(tmp_path / "ws"), max_length=8, max_steps=1)
    with RunStore(tmp_path / "ws") as store:
        assert store.runs()[0]["status"] == "failed"


def test_sft_saves_registers_and_records_the_run(tiny, tmp_path):
    from assay.models.registry import load_model, resolve_model
    from assay.train.lora import lora_is_trained
    from assay.train.sft import sft
    from assay.train.store import metrics, training_summary

    ws = str(tmp_path / "ws")
    result = sft(
        qa_rows(10),
        model="tiny",
        name="adder",
        workspace=ws,
        max_steps=3,
        batch_size=4,
        eval_fraction=0.2,
        early_stopping_patience=2,
        save_steps=2,
        learning_rate=1e-2,
    )
    assert result.model_name == "tiny+adder"
    spec = resolve_model("local/tiny+adder")
    assert spec.adapter == result.adapter_dir.resolve()
    model, _ = load_model("tiny+adder", device="cpu")
    assert lora_is_trained(model)
    with RunStore(ws) as store:
        seen = store.con.execute(
            "select split, row_id from train_rows where run_id = ? order by split, position",
            [result.run_id],
        ).fetchall()
        losses = metrics(store, result.run_id, "loss")
        summary = training_summary(store, result.run_id)
    train_ids = [r for s, r in seen if s == "train"]
    eval_ids = [r for s, r in seen if s == "eval"]
    assert len(eval_ids) == 2 and len(train_ids) == 8
    assert sorted(train_ids + eval_ids) == sorted(f"q{k}" for k in range(10))
    assert [s for s, _ in losses] == [1, 2, 3]
    assert summary[0] == "training: sft on tiny [done]" and "tiny+adder" in summary[2]


def test_packing_packs_rows_into_fewer_sequences(tiny, tmp_path):
    from assay.train.sft import SFTSettings, build_sft_trainer

    settings = SFTSettings(model="tiny", max_length=64, packing=True)
    trainer = build_sft_trainer(settings, qa_rows(12), [], [], tmp_path / "out")
    assert len(trainer.train_dataset) < 12
    assert sum(len(x) for x in trainer.train_dataset["input_ids"]) > 12 * 8


def test_resume_continues_from_the_last_checkpoint(tiny, tmp_path):
    from assay.train.sft import sft

    ws, out = str(tmp_path / "ws"), str(tmp_path / "out")
    first = sft(
        qa_rows(8),
        model="tiny",
        workspace=ws,
        output_dir=out,
        max_steps=2,
        batch_size=4,
        save_steps=2,
    )
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    second = sft(
        qa_rows(8),
        model="tiny",
        workspace=ws,
        output_dir=out,
        max_steps=4,
        batch_size=4,
        save_steps=2,
    )
    with RunStore(ws) as store:
        steps = [
            s
            for (s,) in store.con.execute(
                "select step from train_metrics where run_id = ? and name = 'loss' order by step",
                [second.run_id],
            ).fetchall()
        ]
    assert steps == [3, 4]  # steps 1-2 came from checkpoint-2, not retrained
    assert first.run_id != second.run_id


def test_full_finetune_and_export_merge(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from assay.models.registry import load_model, resolve_model
    from assay.train.export import export_model
    from assay.train.sft import sft

    ws = str(tmp_path / "ws")
    full = sft(
        qa_rows(4),
        model="tiny",
        name="tiny-full",
        full=True,
        workspace=ws,
        max_steps=1,
        batch_size=4,
    )
    assert full.model_name == "tiny-full"
    assert resolve_model("tiny-full").source == full.adapter_dir.resolve()

    sft(
        qa_rows(8),
        model="tiny",
        name="m",
        workspace=ws,
        max_steps=2,
        batch_size=4,
        learning_rate=5e-2,
    )
    merged_dir = export_model("tiny+m", tmp_path / "merged")
    adapter_dir = export_model("tiny+m", tmp_path / "lora", merge=False)
    assert (adapter_dir / "adapter_config.json").exists()
    assert (
        list(merged_dir.glob("*.safetensors")) and not (merged_dir / "adapter_config.json").exists()
    )
    peft_model, tok = load_model("tiny+m", device="cpu")
    base, _ = load_model("tiny", device="cpu")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = tok("What is 3+1?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-3)


def test_metrics_are_written_in_groups_and_at_the_end(tmp_path) -> None:
    """The store is opened at most every `every_s` seconds while training logs, and once at
    the end: every logged step's metrics arrive, none twice."""
    from types import SimpleNamespace

    from assay.train import store as train_store
    from assay.train.runner import StoreCallback

    with RunStore(tmp_path) as store:
        run_id = train_store.start_run(store, "sft", "tiny", {}, str(tmp_path), {"train": []})

    def count() -> int:
        with RunStore(tmp_path) as store:
            return store.con.execute(
                "select count(*) from train_metrics where run_id = ?", [run_id]
            ).fetchone()[0]

    recorder = StoreCallback(str(tmp_path), run_id, every_s=3600)
    for step in (1, 2, 3):
        recorder.on_log(None, SimpleNamespace(global_step=step), None, logs={"loss": 1.0 / step})
    assert count() == 0  # nothing written yet: within the hour
    recorder.on_train_end(None, SimpleNamespace(global_step=3), None)
    assert count() == 3
    recorder.every_s = 0  # now every log writes
    recorder.on_log(None, SimpleNamespace(global_step=4), None, logs={"loss": 0.2})
    recorder.on_train_end(None, SimpleNamespace(global_step=4), None)
    assert count() == 4
