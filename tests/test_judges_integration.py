"""One LLM judge on the real embedded model (slow: marked integration)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from assay.datasets.halueval import as_responses, load_halueval
from assay.judges.grounding import GroundingJudge
from assay.judges.llm_judge import run_sync

pytestmark = pytest.mark.integration


def test_grounding_judge_on_the_embedded_model_returns_schema_valid_verdicts() -> None:
    rows = as_responses(load_halueval("qa", "test", limit=1))
    table = pa.Table.from_pylist(
        [{k: r[k] for k in ("id", "context", "prompt", "response")} for r in rows]
    )
    judge = GroundingJudge(
        model="local/smollm2-135m",
        response_column="response",
        prompt_column="prompt",
        max_claims=3,
        max_tokens=200,
    )
    out = run_sync(judge.aprocess(table))
    for row in out.to_pylist():
        if row["grounding_score"] is None:  # a verdict cut off at max_tokens is unscored
            assert row["grounding_verdict"] == "error" and row["grounding_error"]
            continue
        claims = json.loads(row["grounding_claims"])
        assert len(claims) == row["grounding_n_claims"] <= 3
        assert {c["label"] for c in claims} <= {"supported", "unsupported", "contradicted"}
        supported = sum(c["label"] == "supported" for c in claims)
        assert row["grounding_score"] == pytest.approx(supported / len(claims) if claims else 1.0)
    assert (
        judge.reward([rows[0]["prompt"]], [rows[0]["response"]], context=[rows[0]["context"]])[0]
        == out["grounding_score"][0].as_py()
    )
