"""Which run and stage the current code works for, so that LLM requests are attributed.

The executor sets `current_stage` around each stage call; contextvars follow asyncio tasks
and `asyncio.to_thread`, so a client deep inside a stage reads it without being passed it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from assay.curate.store import RunStore


@dataclass(frozen=True)
class StageContext:
    run_id: str
    stage_index: int
    stage_name: str
    store: RunStore | None = None
    no_cache: bool = False


current_stage: ContextVar[StageContext | None] = ContextVar("assay_current_stage", default=None)
