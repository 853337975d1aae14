"""Stages that transform rows: generate, parse, filter, dedupe, decontaminate, format."""

from assay.operators import generate, parse, text, tools, traces  # noqa: F401  (registers the stages)
from assay.operators.dedupe import (  # noqa: F401
    decontaminate,
    exact,  # noqa: F401
    minhash,
    semantic,
)
