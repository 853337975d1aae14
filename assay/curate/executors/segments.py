"""Segments: the stage list cut before every stage that needs a global pass (a fit)."""

from __future__ import annotations

from dataclasses import dataclass

from assay.curate.stage import Stage


@dataclass
class Segment:
    index: int
    offset: int  # index of its first stage in the pipeline
    stages: list[Stage]


def split_segments(stages: list[Stage]) -> list[Segment]:
    """Cut the stage list before every stage that needs a global pass over its input."""
    segments: list[Segment] = []
    current: list[Stage] = []
    offset = 0
    for i, stage in enumerate(stages):
        if stage.needs_fit and current:
            segments.append(Segment(len(segments), offset, current))
            current, offset = [], i
        current.append(stage)
    segments.append(Segment(len(segments), offset, current))
    return segments
