"""assay: turn LLM calls into curated training data, then into better small models."""

__version__ = "0.1.0"
