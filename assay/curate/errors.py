"""Errors the engine raises; each names the stage, column, file or row it is about."""

from __future__ import annotations


class AssayError(Exception):
    """Base class of every error assay raises on purpose."""


class StageError(AssayError):
    """A stage failed on a batch; names the stage and, where known, the row id and column."""

    def __init__(
        self,
        stage: str,
        message: str,
        *,
        column: str | None = None,
        row_id: str | None = None,
    ) -> None:
        self.stage = stage
        self.column = column
        self.row_id = row_id
        where = [f"stage {stage!r}"]
        if column is not None:
            where.append(f"column {column!r}")
        if row_id is not None:
            where.append(f"row id {row_id!r}")
        super().__init__(f"{', '.join(where)}: {message}")


class MissingColumnError(StageError):
    """A stage needs a column its input does not have."""

    def __init__(self, stage: str, column: str, available: list[str]) -> None:
        super().__init__(
            stage,
            f"input has no column {column!r} (columns: {', '.join(available) or 'none'})",
            column=column,
        )


class SourceError(AssayError):
    """A source could not be read; names the file and, where known, the row."""


class RecipeError(AssayError):
    """A recipe is malformed; names the file, the stage and the parameter."""
