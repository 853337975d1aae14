"""Judges over groups of answers against the fake OpenAI server: RelativeJudge (one call per
group of samples) and JudgeEnsemble (samples of one judge, several judges, from a recipe)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from openai_server import FakeOpenAI
from test_judges_llm import grounding_responder, kw, run, section, user_text

from assay.curate.recipes import parse_recipe
from assay.curate.stage import Outcome
from assay.judges.ensemble import JudgeEnsemble
from assay.judges.relative import RelativeJudge
from assay.judges.rubric import RubricJudge

# --- RelativeJudge ---------------------------------------------------------------------


def relative_responder(body: dict[str, Any]) -> str:
    """Scores each sample by its length relative to the longest in the group."""
    samples = re.findall(r"\[Sample (\d+)\] (.*)", user_text(body))
    longest = max(len(t) for _, t in samples)
    return json.dumps(
        {
            "scores": [
                {"sample": int(k), "score": len(t) / longest, "explanation": f"{len(t)} chars"}
                for k, t in samples
            ]
        }
    )


def test_relative_judge_scores_each_group_in_one_call() -> None:
    table = pa.table(
        {
            "id": ["p1/s0", "p1/s1", "p2/s0", "p1/s2"],
            "parent_id": ["p1", "p1", "p2", "p1"],
            "prompt": ["q1", "q1", "q2", "q1"],
            "generation": ["aa", "aaaa", "solo", "a"],
        }
    )
    with FakeOpenAI(responder=relative_responder) as server:
        out = run(RelativeJudge(**kw(server)), table)
        assert server.total_billed == 2  # one call per group
        rewards = RelativeJudge(**kw(server)).reward(["a", "a", "b"], ["x", "xx", "y"])
    assert out["relative_score"].to_pylist() == [0.5, 1.0, 1.0, 0.25]
    assert out["relative_verdict"].to_pylist() == ["middle", "best", "only", "worst"]
    assert out["relative_group_size"].to_pylist() == [3, 3, 1, 3]
    assert out["relative_rationale"].to_pylist()[1] == "4 chars"
    assert rewards == [0.5, 1.0, 1.0]


def test_relative_judge_unscores_a_group_with_a_missing_sample() -> None:
    def responder(body: dict[str, Any]) -> str:
        return json.dumps({"scores": [{"sample": 0, "score": 1.0, "explanation": "x"}]})

    table = pa.table(
        {"id": ["a", "b"], "parent_id": ["p", "p"], "prompt": ["q", "q"], "generation": ["1", "2"]}
    )
    with FakeOpenAI(responder=responder) as server:
        out = run(RelativeJudge(**kw(server)), table)
    assert out["relative_score"].to_pylist() == [None, None]
    assert "expected 0..1" in out["relative_error"][0].as_py()


# --- JudgeEnsemble ---------------------------------------------------------------------


def test_ensemble_of_samples_votes_and_reports_agreement() -> None:
    seeds: list[int] = []

    def responder(body: dict[str, Any]) -> str:
        seeds.append(body.get("seed"))
        # the samples disagree on row "mixed": sample 0 (the judge's own seed, 0) passes it
        mixed = section(user_text(body), "Request") == "mixed"
        s = 1 if mixed and body.get("seed") != 0 else 5
        return json.dumps({"rationale": str(s), "relevance": s, "completeness": s, "clarity": s})

    table = pa.table({"id": ["ok", "mixed"], "prompt": ["fine", "mixed"], "generation": ["g", "g"]})
    with FakeOpenAI(responder=responder) as server:
        ensemble = JudgeEnsemble(judges=[RubricJudge(**kw(server))], samples=3, threshold=0.5)
        out = run(ensemble, table)
        temperatures = {b["temperature"] for b in server.bodies}
    assert temperatures == {0.7}
    assert len(set(seeds)) == 3  # each sample has its own seed
    assert isinstance(out, Outcome)
    assert out.kept["ensemble_agreement"].to_pylist() == [1.0]
    mixed = out.rejected.to_pylist()[0]
    assert mixed["ensemble_verdict"] == "fail"
    assert mixed["ensemble_agreement"] == pytest.approx(2 / 3)
    assert mixed["ensemble_scores"] == [1.0, 0.0, 0.0]
    assert mixed["ensemble_score"] == pytest.approx(1 / 3)


def test_ensemble_of_different_judges_from_a_recipe_runs_in_a_pipeline(workspace: Path) -> None:
    def responder(body: dict[str, Any]) -> str:
        if "atomic factual" in user_text(body):
            return grounding_responder(body)
        return json.dumps({"rationale": "ok", "relevance": 5, "completeness": 5, "clarity": 5})

    with FakeOpenAI(responder=responder) as server:
        member = {"model": "openai/fake", "api_base": server.base_url, "max_attempts": 1}
        recipe = json.dumps(
            {
                "name": "ensemble",
                "stages": [
                    {
                        "JudgeEnsemble": {
                            "aggregate": "majority",
                            "threshold": 1.0,
                            "judges": [{"RubricJudge": member}, {"GroundingJudge": member}],
                        }
                    }
                ],
            }
        )
        pipeline = parse_recipe(recipe)
        table = pa.table(
            {
                "id": ["1", "2"],
                "prompt": ["q", "q"],
                "context": ["A b.", "A b."],
                "generation": ["A b.", "Z z."],
            }
        )
        result = pipeline.run(table, workspace=workspace, progress="quiet")
    kept = result.to_arrow()
    assert kept["id"].to_pylist() == ["1"]
    assert kept["ensemble_scores"].to_pylist() == [[1.0, 1.0]]
    with pytest.raises(ValueError, match="not an LLM judge"):
        JudgeEnsemble(judges=[{"AnswerVerifier": {}}])
