"""The distilled judge's plumbing on a tiny randomly initialised BERT (built from a config, no
pretrained weights): chunking, training, the registry by name, the stage, the reward, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from assay.curate.errors import AssayError
from assay.curate.recipes import parse_recipe
from assay.curate.stage import Outcome
from assay.judges.cross_encoder import ChunkedPairs
from assay.judges.distill_train import train_distilled
from assay.judges.distilled import DistilledJudge
from assay.operators.dedupe.embeddings import resolve_model


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's (installed) tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def judges_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ASSAY_JUDGES_DIR", str(tmp_path / "judges"))
    return tmp_path / "judges"


def rows(n: int) -> list[dict[str, object]]:
    """Grounded answers repeat the context's colour; ungrounded ones name another colour."""
    out = []
    for i in range(n):
        colour, other = ("red", "blue") if i % 2 else ("green", "purple")
        context = f"The car in story {i} is {colour}."
        out.append(
            {
                "id": f"{i}/r",
                "context": context,
                "prompt": "What colour?",
                "response": f"It is {colour}.",
                "grounded": True,
            }
        )
        out.append(
            {
                "id": f"{i}/h",
                "context": context,
                "prompt": "What colour?",
                "response": f"It is {other}.",
                "grounded": False,
            }
        )
    return out


def test_long_contexts_are_chunked_never_truncated(tiny_encoder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    pairs = ChunkedPairs(tokenizer, max_length=48, prompt_tokens=8, overlap=4)
    words = [f"w{k}" for k in range(200)]
    encoded = pairs.encode([{"context": " ".join(words), "prompt": "", "response": "w7 w8"}])
    assert len(encoded.input_ids) > 3 and all(len(ids) <= 48 for ids in encoded.input_ids)
    # every context token appears in some chunk (the context is covered, not cut)
    context_ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    seen = {t for ids in encoded.input_ids for t in ids}
    assert set(context_ids) <= seen
    assert encoded.owner == [0] * len(encoded.input_ids)
    # training keeps the chunk sharing the most words with the claim
    best = pairs.encode(
        [{"context": " ".join(words), "prompt": "", "response": "w150 w151"}], best_chunk_only=True
    )
    assert len(best.input_ids) == 1
    assert "w150" in tokenizer.decode(best.input_ids[0])


def test_train_register_and_judge_by_name(tiny_encoder: Path, judges_dir: Path) -> None:
    path = train_distilled(
        rows(8),
        "tiny",
        base_model=str(tiny_encoder),
        max_length=64,
        batch_size=4,
        epochs=2,
        learning_rate=1e-3,
    )
    assert path == judges_dir / "tiny"
    meta = json.loads((path / "judge.json").read_text())
    assert meta["train_rows"] == 16 and meta["max_length"] == 64
    table = pa.table(
        {
            "id": ["a", "b"],
            "context": ["The car is red.", "The car is red."],
            "generation": ["It is red.", "It is blue."],
        }
    )
    judge = DistilledJudge(judge="tiny")
    out = judge.process(table)
    assert isinstance(out, pa.Table)
    scores = out["distilled_score"].to_pylist()
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert out["distilled_chunks"].to_pylist() == [1, 1]
    assert out["distilled_verdict"].to_pylist() == [
        "grounded" if s >= 0.5 else "ungrounded" for s in scores
    ]
    # as a filter, rows below the threshold are rejected with the verdict
    cut = max(scores) + 1e-9
    filtered = DistilledJudge(judge="tiny", threshold=cut).process(table)
    assert isinstance(filtered, Outcome) and filtered.rejected.num_rows == 2
    assert filtered.reason_array()[0].as_py().startswith("ungrounded (score ")
    # the reward is the same score
    reward = judge.reward(
        ["q", "q"],
        ["It is red.", [{"role": "assistant", "content": "It is blue."}]],
        context=["The car is red.", "The car is red."],
    )
    assert reward == pytest.approx(scores, abs=1e-6)
    with pytest.raises(KeyError, match="context"):
        judge.reward(["q"], ["x"])
    passages = pa.table(
        {
            "id": ["p"],
            "context": [["Passage one.", "The car is red."]],
            "generation": ["It is red."],
        }
    )
    assert judge.process(passages)["distilled_score"][0].as_py() is not None


def test_recipes_name_a_trained_judge_and_unknown_names_fail_early(
    tiny_encoder: Path, judges_dir: Path
) -> None:
    train_distilled(rows(2), "recipe-judge", base_model=str(tiny_encoder), max_length=64)
    pipeline = parse_recipe(
        "name: t\nstages:\n  - DistilledJudge: {judge: recipe-judge, response_column: answer}\n"
    )
    assert pipeline.stages[0].input_columns() == ["context", "answer"]
    with pytest.raises(Exception, match="no trained judge 'missing'.*recipe-judge"):
        DistilledJudge(judge="missing")


def test_training_rows_are_checked(tiny_encoder: Path, judges_dir: Path) -> None:
    with pytest.raises(AssayError, match="row 1 .* 'response'"):
        train_distilled(
            [
                {"context": "c", "response": "r", "grounded": True},
                {"context": "c", "grounded": False},
            ],
            "bad",
            base_model=str(tiny_encoder),
        )
    with pytest.raises(AssayError, match="both grounded and ungrounded"):
        train_distilled(
            [{"context": "c", "response": "r", "grounded": True}],
            "bad",
            base_model=str(tiny_encoder),
        )


def test_cli_trains_from_a_file_and_lists_it(
    tiny_encoder: Path, judges_dir: Path, tmp_path: Path
) -> None:
    from assay.curate.cli import app

    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows(3)) + "\n")
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "judge",
            "train",
            "from-file",
            "--data",
            str(data),
            "--base-model",
            str(tiny_encoder),
            "--max-length",
            "64",
        ],
    )
    assert done.exit_code == 0, done.output
    assert "DistilledJudge(judge='from-file')" in done.output
    listed = runner.invoke(app, ["judge", "list"])
    assert "from-file:" in listed.output and "6 rows" in listed.output
