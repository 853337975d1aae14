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
    assert encoded.notes == [f"best of {len(encoded.input_ids)} windows"]
    # training keeps the chunk sharing the most words with the claim
    row = {"context": " ".join(words), "prompt": "", "response": "w150 w151"}
    best = pairs.encode([row], training=True)
    assert len(best.input_ids) == 1
    assert "w150" in tokenizer.decode(best.input_ids[0])
    # select="best" scores only that window at inference too, and says which it was
    one = ChunkedPairs(tokenizer, max_length=48, prompt_tokens=8, overlap=4, select="best")
    chosen = one.encode([row])
    assert len(chosen.input_ids) == 1 and chosen.input_ids == best.input_ids
    assert chosen.notes[0].startswith("window ") and chosen.notes[0].endswith("(most claim words)")


def test_evidence_keeps_the_sentences_that_cover_the_claim_in_document_order(
    tiny_encoder: Path,
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    filler = [f"Filler sentence number {k} talks about weather and roads." for k in range(30)]
    document = filler[:5] + ["The mayor opened a bridge in Lisbon."] + filler[5:20]
    document += ["The bridge cost four million euros."] + filler[20:]
    row = {
        "context": " ".join(document),
        "prompt": "",
        "response": "Lisbon's mayor opened a bridge that cost four million euros.",
    }
    pairs = ChunkedPairs(tokenizer, max_length=64, prompt_tokens=8, select="evidence")
    encoded = pairs.encode([row])
    assert len(encoded.input_ids) == 1 and len(encoded.input_ids[0]) <= 64
    text = tokenizer.decode(encoded.input_ids[0])
    # both evidence sentences, the one that comes first in the document first
    assert text.index("lisbon") < text.index("four million") < text.index("[SEP]")
    assert "filler" not in text.split("[SEP]")[0]
    note = encoded.notes[0]
    assert note.startswith("evidence: 2 of 32 sentences") and "claim words found" in note
    # a short context is read whole, in every mode
    short = {"context": "The bridge cost four million euros.", "prompt": "", "response": "x"}
    assert pairs.encode([short]).notes == ["whole context"]
    with pytest.raises(ValueError, match="select="):
        ChunkedPairs(tokenizer, select="first")


def test_pairs_stay_in_one_batch_and_platt_recovers_a_known_calibration() -> None:
    import random

    from assay.judges.cross_encoder import Encoded
    from assay.judges.distill_train import pair_index, plan_batches, platt

    rows = [
        {"parent_id": "p1", "grounded": True},
        {"parent_id": "p1", "grounded": False},
        {"parent_id": "p2", "grounded": False},
        {"parent_id": "p2", "grounded": True},
        {"parent_id": "p3", "grounded": True},  # no partner: trained alone
        {"grounded": False},
    ]
    assert pair_index(rows) == [(0, 1), (3, 2)]
    encoded = Encoded(input_ids=[[1] * n for n in (5, 9, 3, 4, 7, 2)], owner=list(range(6)))
    planned = plan_batches(encoded, pair_index(rows), 3, random.Random(1))
    assert sorted(k for batch in planned for k in batch) == list(range(6))
    for batch in planned:
        assert (0 in batch) == (1 in batch) and (2 in batch) == (3 in batch)
    # labels drawn from sigmoid(2 z - 1): Platt scaling finds a ~ 2, b ~ -1
    rng = random.Random(0)
    logits = [rng.uniform(-4, 4) for _ in range(4000)]
    labels = [rng.random() < 1 / (1 + 2.718281828 ** -(2 * z - 1)) for z in logits]
    a, b = platt(logits, labels)
    assert a == pytest.approx(2.0, abs=0.25) and b == pytest.approx(-1.0, abs=0.2)


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
    assert meta["calibration"] is None  # no validation rows: raw sigmoid scores
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
    assert out["distilled_rationale"].to_pylist() == ["whole context", "whole context"]
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


def test_other_context_negatives_keep_the_answer_and_change_the_context() -> None:
    from assay.judges.distill_train import context_negatives, pair_index

    contexts = [
        "Lisbon bridge opened by the mayor in spring.",
        "The mayor of Lisbon opened the new bridge.",
        "Jupiter has dozens of moons and a great red spot.",
    ]
    data = []
    for k, context in enumerate(contexts):
        data.append({"parent_id": k, "context": context, "response": f"r{k}", "grounded": True})
        data.append({"parent_id": k, "context": context, "response": f"h{k}", "grounded": False})
    for mode in ("random", "similar"):
        extra = context_negatives(data, mode, seed=3)
        assert len(extra) == 3
        for row, own in zip(extra, data[0::2], strict=True):
            assert row["response"] == own["response"] and row["parent_id"] == own["parent_id"]
            assert row["context"] != own["context"] and row["grounded"] is False
        # each grounded answer is now paired with its hallucinated one and the swapped row
        assert len(pair_index(data + extra)) == 6
    similar = context_negatives(data, "similar")
    assert similar[0]["context"] == contexts[1] and similar[1]["context"] == contexts[0]
    with pytest.raises(AssayError, match="random or similar"):
        context_negatives(data, "nearest")


def test_cut_layers_pairwise_loss_calibration_and_int8(
    tiny_encoder: Path, judges_dir: Path
) -> None:
    import math

    from assay.judges.distilled import calibrated, chunker_for, judge_logits, load_judge

    train = [dict(r, parent_id=str(r["id"]).split("/")[0]) for r in rows(12)]
    validation = [dict(r, parent_id=str(r["id"]).split("/")[0]) for r in rows(6)]
    path = train_distilled(
        train,
        "cut",
        base_model=str(tiny_encoder),
        max_length=64,
        batch_size=4,
        epochs=2,
        learning_rate=1e-3,
        layers=1,
        pairwise_weight=1.0,
        freeze_embeddings=True,
        validation=validation,
    )
    meta = json.loads((path / "judge.json").read_text())
    assert meta["layers"] == 1 and meta["train_pairs"] == 12 and meta["pairwise_weight"] == 1.0
    assert meta["validation"]["pairs"] == 6 and meta["validation"]["rows"] == 12
    assert set(meta["calibration"]) == {"a", "b", "fitted_on"}
    model, tokenizer, loaded = load_judge(str(path))
    assert model.config.num_hidden_layers == 1 and len(model.bert.encoder.layer) == 1
    # the stage's score is the calibrated logit
    plain = [dict(r, prompt="") for r in validation[:2]]  # the stage below has no prompt
    logits, _, _ = judge_logits(model, chunker_for(tokenizer, loaded), plain)
    cal = meta["calibration"]
    assert calibrated(logits[0], loaded) == pytest.approx(
        1 / (1 + math.exp(-(cal["a"] * logits[0] + cal["b"])))
    )
    table = pa.table(
        {
            "id": ["a", "b"],
            "context": [validation[0]["context"]] * 2,
            "generation": [validation[0]["response"], validation[1]["response"]],
        }
    )
    fp32 = DistilledJudge(judge="cut").process(table)["distilled_score"].to_pylist()
    assert fp32 == pytest.approx([calibrated(z, loaded) for z in logits], abs=1e-6)
    # int8: quantised linear layers, scores close to float32
    q_model, _, _ = load_judge(str(path), None, "int8")
    assert "quantized" in type(q_model.bert.encoder.layer[0].attention.self.query).__module__
    int8 = DistilledJudge(judge="cut", dtype="int8").process(table)
    assert int8["distilled_score"].to_pylist() == pytest.approx(fp32, abs=0.05)
    bf16 = DistilledJudge(judge="cut", dtype="bfloat16").process(table)
    assert bf16["distilled_score"].to_pylist() == pytest.approx(fp32, abs=0.05)
    with pytest.raises(ValueError, match="dtype='int4'"):
        DistilledJudge(judge="cut", dtype="int4")
    with pytest.raises(Exception, match="layers=3"):
        train_distilled(train, "deep", base_model=str(tiny_encoder), layers=3)


def test_a_stopped_training_resumes_from_its_checkpoint_to_the_same_judge(
    tiny_encoder: Path, judges_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from safetensors.torch import load_file

    import assay.judges.distill_train as distill_train
    from assay.judges.distill_train import checkpoint_path

    train = [dict(r, parent_id=str(r["id"]).split("/")[0]) for r in rows(8)]
    settings = dict(
        base_model=str(tiny_encoder),
        max_length=64,
        batch_size=4,
        epochs=2,
        learning_rate=1e-3,
        pairwise_weight=1.0,
        other_contexts="random",
        threads=1,
    )
    whole = train_distilled(train, "whole", checkpoint_every=3, **settings)
    assert not checkpoint_path("whole").exists()  # removed once the judge is saved

    class Stopped(Exception):
        pass

    save = distill_train._save_checkpoint
    saved: list[int] = []

    def save_then_stop(path: Path, state: dict) -> None:
        save(path, state)
        saved.append(state["step"])
        if len(saved) == 2:
            raise Stopped

    monkeypatch.setattr(distill_train, "_save_checkpoint", save_then_stop)
    with pytest.raises(Stopped):
        train_distilled(train, "resumed", checkpoint_every=3, **settings)
    assert saved == [3, 6] and checkpoint_path("resumed").exists()
    assert not (judges_dir / "resumed" / "judge.json").exists()
    # other settings or rows: refused, the checkpoint kept
    with pytest.raises(AssayError, match="learning_rate"):
        train_distilled(train, "resumed", resume=True, **dict(settings, learning_rate=1e-4))
    with pytest.raises(AssayError, match="rows"):
        train_distilled(train[:-2], "resumed", resume=True, **settings)
    monkeypatch.setattr(distill_train, "_save_checkpoint", save)
    log: list[str] = []
    resumed = train_distilled(train, "resumed", resume=True, log=log.append, **settings)
    assert log[0].startswith("resumed from") and "at step 6/" in log[0]
    assert not checkpoint_path("resumed").exists()
    # the same batches, optimiser state and dropout draws: the same weights
    first, second = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key], second[key], atol=1e-5), key
    start = load_file(tiny_encoder / "model.safetensors")
    assert not torch.allclose(first["classifier.weight"], start["classifier.weight"])


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
    # the training options of the final HaluEval judges, calibrated on a validation file
    done = runner.invoke(
        app,
        [
            "judge",
            "train",
            "calibrated",
            "--data",
            str(data),
            "--validation",
            str(data),
            "--base-model",
            str(tiny_encoder),
            "--max-length",
            "64",
            "--layers",
            "1",
            "--select",
            "evidence",
            "--other-contexts",
            "random",
            "--freeze-embeddings",
            "--bf16",
            "--dtype",
            "int8",
        ],
    )
    assert done.exit_code == 0, done.output
    meta = json.loads((judges_dir / "calibrated" / "judge.json").read_text())
    assert meta["layers"] == 1 and meta["select"] == "evidence"
    assert meta["other_contexts"] == "random" and meta["train_examples"] == 9
    assert meta["inference_dtype"] == "int8" and meta["calibration"] is not None


def test_cli_train_resumes_a_stopped_training(
    tiny_encoder: Path, judges_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import assay.judges.distill_train as distill_train
    from assay.curate.cli import app
    from assay.judges.distill_train import checkpoint_path

    data = tmp_path / "labelled.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows(8)) + "\n")
    command = ["judge", "train", "cli-resumed", "--data", str(data), "--validation", "none"]
    command += ["--base-model", str(tiny_encoder), "--max-length", "64", "--batch-size", "4"]
    command += ["--checkpoint-every", "2", "--threads", "1"]
    save = distill_train._save_checkpoint

    def save_then_stop(path: Path, state: dict) -> None:
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(distill_train, "_save_checkpoint", save_then_stop)
    stopped = CliRunner().invoke(app, command)
    assert stopped.exit_code != 0 and checkpoint_path("cli-resumed").exists()
    monkeypatch.setattr(distill_train, "_save_checkpoint", save)
    refused = CliRunner().invoke(app, [*command, "--resume", "--learning-rate", "1e-3"])
    assert refused.exit_code != 0 and checkpoint_path("cli-resumed").exists()
    done = CliRunner().invoke(app, [*command, "--resume"])
    assert done.exit_code == 0, done.output
    assert "resumed from" in done.output and "at step 2/" in done.output
    assert not checkpoint_path("cli-resumed").exists()
