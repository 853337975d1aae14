"""Reasoning traces: rejection sampling with verification, selection and step segmentation."""

from assay.operators.traces import stage  # noqa: F401  (registers the stages)
from assay.operators.traces.stage import ReasoningTraces, SegmentSteps

__all__ = ["ReasoningTraces", "SegmentSteps"]
