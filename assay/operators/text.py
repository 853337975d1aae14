"""Text clean-up and length filters over string columns (column operations, no row loops)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assay.curate.arrays import bools, from_numpy, scalar
from assay.curate.registry import register
from assay.curate.stage import Filter, Map

# Same result as r"\s+" -> " ", but only matches what must change (runs of two or more, or a
# single tab/newline), which makes the common single-space text 3-4x faster to process.
# RE2's \s is ASCII whitespace: [\t\n\f\r ].
WHITESPACE_RUNS = r"\s{2,}|[^\S ]"


@register
class Normalize(Map):
    """Normalise a text column: Unicode form, whitespace runs, surrounding space, case.

    Input columns: `column` (string). Output columns: `output_column` (string; defaults to
    `column`, overwritten in place).

    Example: `Normalize(column="text", lowercase=True)` turns `"  Héllo\\n\\tWORLD "` into
    `"héllo world"`.

    Rows that are plain ASCII (most English text) take cheaper kernels with the same result:
    no Unicode form (it leaves ASCII as it is), ASCII lower case, and the whitespace regex
    only on the rows that hold a double space or a tab, newline, form feed or return.
    """

    column: str = "text"
    output_column: str | None = None
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFKC"
    collapse_whitespace: bool = True
    strip: bool = True
    lowercase: bool = False

    def input_columns(self) -> list[str]:
        return [self.column]

    def map(self, table: pa.Table) -> pa.Table:
        column = table[self.column]
        chunks = [self._normalized(chunk) for chunk in column.chunks]
        values = pa.chunked_array(chunks) if chunks else column
        out = self.output_column or self.column
        if out in table.column_names:
            return table.set_column(table.column_names.index(out), out, values)
        return table.append_column(out, values)

    def _normalized(self, values: pa.Array) -> pa.Array:
        buffers = _string_buffers(values)
        if buffers is None:  # not a plain string array: every kernel on every row
            return self._general(values)
        offsets, data = buffers
        wide = None  # rows with a non-ASCII byte
        if data.size and int(data.max()) >= 0x80:
            wide = ~bools(pc.string_is_ascii(values))
            if wide.sum() * 2 > len(values):
                return self._general(values)
        out = values
        if self.collapse_whitespace:
            out = _collapse_whitespace(out, _whitespace_rows(offsets, data))
        if self.strip:
            out = pc.utf8_trim_whitespace(out)  # not ascii_: it trims \x1c-\x1f too
        if self.lowercase:
            out = pc.ascii_lower(out)
        if wide is None:
            return out
        rows = from_numpy(np.flatnonzero(wide))
        return pc.replace_with_mask(out, from_numpy(wide), self._general(values.take(rows)))

    def _general(self, values: pa.Array) -> pa.Array:
        if self.unicode_form:
            values = pc.utf8_normalize(values, form=self.unicode_form)
        if self.collapse_whitespace:
            values = pc.replace_substring_regex(values, pattern=WHITESPACE_RUNS, replacement=" ")
        if self.strip:
            values = pc.utf8_trim_whitespace(values)
        if self.lowercase:
            values = pc.utf8_lower(values)
        return values


def _string_buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(offsets, bytes) of a string / large_string array's rows: row i is
    `data[offsets[i] - offsets[0] : offsets[i + 1] - offsets[0]]`; None for other types."""
    if pa.types.is_string(values.type):
        width = np.int32
    elif pa.types.is_large_string(values.type):
        width = np.int64
    else:
        return None
    _, offsets, data = values.buffers()
    if offsets is None or data is None or not len(values):
        return np.zeros(len(values) + 1, width), np.zeros(0, np.uint8)
    offsets = np.frombuffer(offsets, width)[values.offset : values.offset + len(values) + 1]
    return offsets, np.frombuffer(data, np.uint8)[int(offsets[0]) : int(offsets[-1])]


def _whitespace_rows(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Which rows `WHITESPACE_RUNS` can change: those with two spaces in a row or a byte from
    \\t to \\r (RE2's \\s is ASCII, so UTF-8 text is judged by its ASCII bytes alike). A
    pair across two rows marks a row needlessly, which costs only time."""
    n = len(data)
    # "  " at even and at odd positions, two bytes at a time
    found = [
        np.flatnonzero(data[: n // 2 * 2].view("<u2") == 0x2020) * 2,
        np.flatnonzero(data[1 : 1 + (n - 1) // 2 * 2].view("<u2") == 0x2020) * 2 + 1,
    ]
    if n and int(data.min()) <= 13:  # some byte below 14: find tab to return too
        found.append(np.flatnonzero(np.subtract(data, 9, dtype=np.uint8) <= 4))
    positions = np.concatenate(found) + offsets[0]
    need = np.zeros(len(offsets) - 1, bool)
    need[np.searchsorted(offsets, positions, side="right") - 1] = True
    return need


def _collapse_whitespace(values: pa.Array, need: np.ndarray) -> pa.Array:
    """`WHITESPACE_RUNS` replaced by a space, the regex run only on the rows `need` marks."""
    count = int(need.sum())
    if not count:
        return values
    if count * 4 > len(values):
        return pc.replace_substring_regex(values, pattern=WHITESPACE_RUNS, replacement=" ")
    rows = values.take(from_numpy(np.flatnonzero(need)))
    fixed = pc.replace_substring_regex(rows, pattern=WHITESPACE_RUNS, replacement=" ")
    return pc.replace_with_mask(values, from_numpy(need), fixed)


@register
class MinLength(Filter):
    """Drop rows whose `column` is shorter than `chars` characters (nulls are dropped too).

    Input columns: `column` (string). Output columns: unchanged.
    Rejects: "shorter than N chars".
    """

    column: str = "text"
    chars: int = 20
    reason = "shorter than {chars} chars"

    def input_columns(self) -> list[str]:
        return [self.column]

    def keep(self, table: pa.Table) -> pa.Array:
        lengths = pc.utf8_length(table[self.column])
        return pc.greater_equal(lengths, scalar(self.chars, lengths.type))


@register
class MaxLength(Filter):
    """Drop rows whose `column` is longer than `chars` characters.

    Input columns: `column` (string). Output columns: unchanged.
    Rejects: "longer than N chars".
    """

    column: str = "text"
    chars: int = 100_000
    reason = "longer than {chars} chars"

    def input_columns(self) -> list[str]:
        return [self.column]

    def keep(self, table: pa.Table) -> pa.Array:
        lengths = pc.utf8_length(table[self.column])
        return pc.less_equal(lengths, scalar(self.chars, lengths.type))
