"""Tool environments and multi-turn tool rollouts.

- api.py: tools are Python callables; JSON schemas from type hints and Google docstrings.
- environment.py: ToolEnvironment (reset / step / end_turn / done / final_state / score).
- sql_env.py: SqlEnvironment (list_tables, describe_table, run_query on a read-only DuckDB);
  sql_demo.py: a seeded shop database and its questions.
- bfcl_env.py: BfclEnvironment (BFCL's multi-turn APIs, scored by BFCL's checker);
  bfcl_calls.py: BFCL call strings and the per-turn ground-truth call check.
- rollouts.py: ToolRollouts, the stage that plays episodes with a model.
- trl.py: `as_trl_environment`, the same environments for TRL's `environment_factory`.
"""

from assay.operators.tools import rollouts  # noqa: F401  (registers ToolRollouts)
from assay.operators.tools.api import tool, tool_schema
from assay.operators.tools.environment import EpisodeScore, ToolEnvironment, ToolResult
from assay.operators.tools.rollouts import ToolRollouts

__all__ = [
    "EpisodeScore",
    "ToolEnvironment",
    "ToolResult",
    "ToolRollouts",
    "tool",
    "tool_schema",
]
