"""Stages that score rows: LLM judges, grounding checks, verifiers, step-level judges."""
