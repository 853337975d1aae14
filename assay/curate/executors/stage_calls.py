"""Calling a stage on one batch: failures named after the stage and the batch."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from assay.curate.errors import AssayError, StageError
from assay.curate.stage import Outcome, Stage


class Abandoned(Exception):
    """A batch left unfinished because another one failed (the resume redoes it)."""


def call_stage(stage: Stage, b: int, fn: Any, table: pa.Table) -> pa.Table | Outcome:
    """`fn(table)`, a failure named after the stage and batch."""
    try:
        return fn(table)
    except AssayError:
        raise
    except Exception as exc:
        raise stage_error(stage, b, exc) from exc


def stage_error(stage: Stage, b: int, exc: Exception) -> StageError:
    """The error a stage's failure on batch `b` is raised as."""
    return StageError(stage.name, f"failed on batch {b}: {type(exc).__name__}: {exc}")
