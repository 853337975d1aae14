"""Distillation losses against a hand-computed KL, context / token distillation, DPO and a GRPO
step rewarded by an assay verifier, on a tiny random model."""

from __future__ import annotations

import math

import pytest
import torch
from local_tiny_model import registered_tiny_model

from assay.judges.base import Verdict, Verifier
from assay.train.runner import TrainingSignalError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with registered_tiny_model(tmp_path_factory.mktemp("train-rl")) as root:
        yield root


def test_kd_loss_equals_hand_computed_kl():
    from assay.train.distill import kd_loss

    s = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    t = [[0.0, 2.0, 0.0], [1.0, -1.0, 0.0]]
    temp = 2.0

    def softmax(xs):
        e = [math.exp(x / temp) for x in xs]
        return [v / sum(e) for v in e]

    want = 0.0
    for srow, trow in zip(s, t, strict=True):
        p, q = softmax(trow), softmax(srow)
        want += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    want = temp * temp * want / 2
    got = kd_loss(torch.tensor(s), torch.tensor(t), temp)
    assert abs(float(got) - want) < 1e-6
    assert float(kd_loss(torch.tensor(t), torch.tensor(t), temp)) == pytest.approx(0.0, abs=1e-7)


def distill_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"d{k}",
            "prompt": [{"role": "user", "content": f"What is {k}+2?"}],
            "teacher_prompt": [
                {"role": "system", "content": "You add numbers. Reply with the number only."},
                {"role": "user", "content": f"What is {k}+2?"},
            ],
            "completion": str(k + 2),
        }
        for k in range(n)
    ]


def test_context_pairs_share_completion_tokens(tiny):
    from assay.models.registry import load_model
    from assay.train.distill import encode_pairs

    _, tok = load_model("tiny", device="cpu")
    (pair,) = encode_pairs(distill_rows(1), tok, "context", 128)
    assert pair["t0"] > pair["s0"]  # the teacher reads the long prompt
    assert pair["student"][pair["s0"] :] == pair["teacher"][pair["t0"] :]
    assert tok.decode(pair["student"][pair["s0"] :]) == "2<|im_end|>"
    with pytest.raises(Exception, match="teacher_prompt"):
        encode_pairs([{"prompt": "x", "completion": "y"}], tok, "context", 128)


def test_context_distillation_moves_the_teacher_into_the_adapter(tiny, tmp_path):
    from assay.models.registry import load_model
    from assay.train.distill import distill, encode_pairs

    result = distill(
        distill_rows(8),
        mode="context",
        model="tiny",
        name="ctx",
        workspace=str(tmp_path / "ws"),
        max_steps=6,
        batch_size=4,
        learning_rate=1e-3,
        alpha=1.0,
    )
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < losses[0]  # pure KL to the LoRA-off teacher goes down
    student, tok = load_model("tiny+ctx", device="cpu")
    pair = encode_pairs(distill_rows(1), tok, "context", 128)[0]
    with torch.no_grad():
        s = student(input_ids=torch.tensor([pair["student"]])).logits[0, pair["s0"] - 1]
        with student.disable_adapter():
            short = student(input_ids=torch.tensor([pair["student"]])).logits[0, pair["s0"] - 1]
            long = student(input_ids=torch.tensor([pair["teacher"]])).logits[0, pair["t0"] - 1]
    # the trained student on the short prompt is closer to the teacher on the long one
    assert torch.dist(s.softmax(-1), long.softmax(-1)) < torch.dist(
        short.softmax(-1), long.softmax(-1)
    )


def test_token_distillation_and_sequence_distillation_record_runs(tiny, tmp_path):
    from assay.curate.store import RunStore
    from assay.train.distill import distill
    from assay.train.store import training_run

    ws = str(tmp_path / "ws")
    token = distill(
        distill_rows(4),
        mode="token",
        teacher="tiny",
        model="tiny",
        name="tok",
        workspace=ws,
        max_steps=1,
        batch_size=4,
    )
    seq = distill(
        distill_rows(4), model="tiny", name="seq", workspace=ws, max_steps=1, batch_size=4
    )
    with RunStore(ws) as store:
        assert training_run(store, token.run_id)["method"] == "distill"
        assert '"mode": "sequence"' in store.run(seq.run_id)["config"].__repr__().replace("'", '"')
    with pytest.raises(Exception, match="--teacher"):
        distill(distill_rows(2), mode="token", model="tiny", workspace=ws)


class Recording(Verifier):
    """Rewards completions that contain the digit '1', and remembers what it scored."""

    gold_column: str = "answer"

    def check(self, candidate, gold, row):
        self.seen.append(candidate)
        ok = "1" in candidate
        return Verdict(ok, 1.0 if ok else 0.0, "no 1")


def grpo_rows(n: int) -> list[dict]:
    return [
        {"id": f"g{k}", "prompt": [{"role": "user", "content": f"What is {k}+1?"}], "answer": k + 1}
        for k in range(n)
    ]


def test_grpo_step_is_rewarded_by_an_assay_verifier(tiny, tmp_path):
    from assay.train.grpo import grpo

    verifier = Recording()
    object.__setattr__(verifier, "seen", [])
    result = grpo(
        grpo_rows(4),
        [verifier],
        model="tiny",
        workspace=str(tmp_path / "ws"),
        max_steps=1,
        max_completion_length=8,
        temperature=1.5,
        patience=10,
    )
    (log,) = [h for h in result.log_history if "reward" in h]
    assert len(verifier.seen) == 8  # 2 prompts x 4 generations
    want = sum("1" in c for c in verifier.seen) / 8
    assert log["rewards/Recording/mean"] == pytest.approx(want)
    assert "frac_reward_zero_std" in log


class Never(Verifier):
    def check(self, candidate, gold, row):
        return Verdict(False, 0.0, "never")


def test_grpo_whose_completions_cannot_finish_fails_loudly(tiny, tmp_path):
    from assay.curate.store import RunStore
    from assay.train.grpo import grpo

    # the random tiny model never samples its stop token: every completion hits the limit
    ws = str(tmp_path / "ws")
    with pytest.raises(TrainingSignalError, match="Raise --max-completion-length"):
        grpo(
            grpo_rows(4),
            [Never()],
            model="tiny",
            workspace=ws,
            max_steps=3,
            max_completion_length=6,
            patience=1,
        )
    with RunStore(ws) as store:
        run = store.run(store.runs()[0]["run_id"])
    assert run["status"] == "failed" and "clipped" in run["error"]


def test_grpo_guard_names_zero_reward_variance():
    from assay.train.grpo import SignalGuard

    class Args:
        max_completion_length = 4

    guard = SignalGuard(patience=2)
    flat = {"frac_reward_zero_std": 1.0, "completions/clipped_ratio": 0.25}
    guard.on_log(Args(), None, None, logs=flat)
    guard.on_log(Args(), None, None, logs={**flat, "frac_reward_zero_std": 0.5})  # resets
    guard.on_log(Args(), None, None, logs=flat)
    with pytest.raises(TrainingSignalError, match="zero reward variance"):
        guard.on_log(Args(), None, None, logs=flat)


def test_grpo_all_clipped_completions_fail_loudly():
    from assay.train.grpo import SignalGuard

    class Args:
        max_completion_length = 4

    guard = SignalGuard(patience=2)
    logs = {"frac_reward_zero_std": 0.5, "completions/clipped_ratio": 1.0}
    guard.on_log(Args(), None, None, logs=logs)
    with pytest.raises(TrainingSignalError, match="max-completion-length"):
        guard.on_log(Args(), None, None, logs=logs)


def test_dpo_on_pairs_from_verified_samples(tiny, tmp_path):
    from assay.train.dpo import dpo, pairs_from_verified

    samples = []
    for k in range(4):
        samples.append(
            {"id": f"s{k}a", "prompt": f"What is {k}+1?", "generation": str(k + 1), "correct": True}
        )
        samples.append(
            {
                "id": f"s{k}b",
                "prompt": f"What is {k}+1?",
                "generation": str(k + 3),
                "correct": False,
            }
        )
    pairs = pairs_from_verified(samples)
    assert pairs[0] == {"id": "s0a|s0b", "prompt": "What is 0+1?", "chosen": "1", "rejected": "3"}
    result = dpo(
        pairs,
        model="tiny",
        name="pref",
        workspace=str(tmp_path / "ws"),
        max_steps=3,
        batch_size=4,
        learning_rate=5e-3,
    )
    margins = [h["rewards/margins"] for h in result.log_history if "rewards/margins" in h]
    assert margins[-1] > margins[0]
    assert result.model_name == "tiny+pref"


class Counter:
    """A tiny tool environment: the public method `add` is the tool."""

    resets: list = []

    def reset(self, **row):
        Counter.resets.append(row.get("answer"))
        self.total = 0

    def add(self, n: int) -> str:
        """Add a number to the counter.

        Args:
            n: the number to add.
        """
        self.total += n
        return str(self.total)


def test_grpo_environment_factory_hook(tiny, tmp_path):
    from assay.train.grpo import grpo

    seen = []

    def env_reward(prompts, completions, environments=None, **columns):
        seen.append(environments)
        return [float(env.total) for env in environments]

    Counter.resets = []
    result = grpo(
        grpo_rows(4),
        [],
        [env_reward],
        environment_factory=Counter,
        model="tiny",
        workspace=str(tmp_path / "ws"),
        max_steps=1,
        max_completion_length=8,
        patience=10,
    )
    assert sorted(set(Counter.resets)) == [1, 2]  # reset(**row) got the rows' columns
    assert seen and all(isinstance(env, Counter) for env in seen[0])
    assert result.model_name == f"tiny+grpo-{result.run_id}"
