"""Stages that score rows: verifiers, LLM judges, grounding checks, step-level judges."""

from assay.judges import (  # noqa: F401  (registers the stages)
    answer,
    distilled,
    ensemble,
    grounding,
    pairwise,
    relative,
    rubric,
    sql,
    step,
    tool_answers,
    tool_calls,
)
