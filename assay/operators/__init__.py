"""Stages that transform rows: generate, parse, filter, dedupe, decontaminate, format."""

from assay.operators import generate, parse, text  # noqa: F401  (registers the stages)
from assay.operators import tools  # noqa: F401  (ToolRollouts)
from assay.operators import traces  # noqa: F401  (ReasoningTraces, SegmentSteps)
from assay.operators.dedupe import (  # noqa: F401
    decontaminate,
    exact,  # noqa: F401
    minhash,
    semantic,
)
