"""Stages that score rows: LLM judges, grounding checks, verifiers, step-level judges."""

from assay.judges import answer  # noqa: F401  (registers the stages)
from assay.judges import sql, tool_calls  # noqa: F401  (SqlExecutionVerifier, ToolCallVerifier)
from assay.judges import (  # noqa: F401  (registers the stages)
    distilled,
    ensemble,
    grounding,
    pairwise,
    relative,
    rubric,
    step,
)
