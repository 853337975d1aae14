"""Stages that transform rows: generate, parse, filter, dedupe, decontaminate, format.

Importing the package imports none of its stage modules (`from assay.operators.generate
import Generate` pays for `generate` alone, not for polars, MinHash or the tool
environments); the stage registry imports `STAGE_MODULES` the first time a recipe or the CLI
looks a stage up by name.
"""

STAGE_MODULES = (
    "assay.operators.generate",
    "assay.operators.parse",
    "assay.operators.text",
    "assay.operators.tools",
    "assay.operators.traces",
    "assay.operators.dedupe.decontaminate",
    "assay.operators.dedupe.exact",
    "assay.operators.dedupe.minhash",
    "assay.operators.dedupe.semantic",
)
