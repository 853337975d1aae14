"""Text normalisation before hashing and shingling, as polars column operations.

Two texts that differ only in case, Unicode compatibility forms (full-width letters,
ligatures), punctuation, symbols or spacing should hash and shingle the same, or a dedupe
stage misses them. `TextNormalization` says which of these differences to ignore; the
dedupe stages take it as `normalize=` (a preset name or the model / a dict of its fields):

    normalize="default"               # lower case, NFKC, punctuation and symbols out
    normalize="datatrove"             # the same, plus digits folded and accents stripped
    normalize="none"                  # compare the raw text
    normalize={"digits": True}        # the default with one flag changed

Steps, in order (each a whole-column polars string kernel on a Series, no Python per row;
the Unicode ones only on rows with a non-ASCII character): NFKC -> lower case -> strip
accents -> fold digits -> drop format characters (soft hyphen, zero-width space) -> turn
punctuation, symbols and control characters (Unicode P*, S*, Cc) into spaces and collapse
whitespace runs to one space, ends stripped (one regex pass).

    normalized(pl.Series(["Ｈｅｌｌｏ, World!"]), "default")  # -> ["hello world"]

`words(text, norm)` is the word list MinHash shingles: the normalised text split at
whitespace. With `punctuation` on, a word is a run of letters, digits and combining marks
("it's" -> "it", "s"; "foo_bar" -> "foo", "bar"), which is how "lower-cased alphanumeric
words" are counted.
"""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

Preset = Literal["default", "datatrove", "none"]

_FORMAT = r"\p{Cf}+"  # soft hyphen, zero-width space/joiners, BOM: invisible, so deleted
_PUNCT = r"[\p{P}\p{S}\p{Cc}]+"
_SEPARATOR = r"[\s\p{P}\p{S}\p{Cc}]+"
_WORD = r"[^\s\p{P}\p{S}\p{Cc}]+"  # what is left between separators once punctuation is out
_NUMBER = r"\d+(?:[.,]\d+)*"  # 3.14 and 1,000 fold to one "0", as datatrove's number rule


class TextNormalization(BaseModel):
    """Which differences between texts a dedupe stage ignores (see the module docstring).

    `lowercase`: case. `unicode_form`: Unicode normalisation (NFKC maps full-width forms,
    ligatures and superscripts to plain ones; null for none). `punctuation`: punctuation,
    symbols and control characters become word separators, format characters are deleted.
    `digits`: every number becomes "0" (off by default: in training data "2+2=4" and
    "3+5=8" are different problems). `accents`: "é" compares equal to "e" (off by default:
    it merges words in many languages). `whitespace`: runs of whitespace collapse to one
    space (words are split at whitespace either way).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lowercase: bool = True
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = "NFKC"
    punctuation: bool = True
    digits: bool = False
    accents: bool = False
    whitespace: bool = True


PRESETS: dict[str, TextNormalization] = {
    "default": TextNormalization(),
    # datatrove's TextNormConfig defaults (norm_numbers, norm_unicode_diacritics on)
    "datatrove": TextNormalization(digits=True, accents=True),
    "none": TextNormalization(
        lowercase=False, unicode_form=None, punctuation=False, whitespace=False
    ),
}

Normalization = TextNormalization | Preset


def resolve(norm: Normalization) -> TextNormalization:
    """The model a preset name stands for (a model is returned as it is)."""
    if isinstance(norm, TextNormalization):
        return norm
    try:
        return PRESETS[norm]
    except KeyError:
        raise ValueError(f"unknown normalize preset {norm!r}: one of {sorted(PRESETS)}") from None


def _folded(text: pl.Series, norm: TextNormalization) -> pl.Series:
    """Unicode form, case, accents and digits: the steps before punctuation.

    The Unicode steps (the form, accents, format characters) leave ASCII unchanged, so
    they run only on the rows with a non-ASCII character (a byte count that differs from
    the character count); in English-heavy text that is a few percent of the rows, and
    NFKC over every row would be the costliest step.
    """
    text = text.cast(pl.String).fill_null("")
    unicode = bool(norm.unicode_form or norm.accents or norm.punctuation)
    if unicode:  # else no step needs to know which rows are wide
        wide = (text.str.len_bytes() != text.str.len_chars()).arg_true()
        unicode = len(wide) > 0
    if unicode and norm.unicode_form:
        text = text.scatter(wide, text.gather(wide).str.normalize(norm.unicode_form))
    if norm.lowercase:
        text = text.str.to_lowercase()
    if unicode and norm.accents:
        stripped = text.gather(wide).str.normalize("NFD").str.replace_all(r"\p{Mn}+", "")
        text = text.scatter(wide, stripped.str.normalize("NFC"))
    if norm.digits:
        text = text.str.replace_all(_NUMBER, "0")
    if unicode and norm.punctuation:
        text = text.scatter(wide, text.gather(wide).str.replace_all(_FORMAT, ""))
    return text


def normalized(text: pl.Series, norm: Normalization, keep_spaces: bool = True) -> pl.Series:
    """`text` normalised (nulls become ""); without `keep_spaces`, whitespace removed too."""
    norm = resolve(norm)
    text = _folded(text, norm)
    # separators (whitespace, and punctuation when it is out) in one regex pass
    if norm.punctuation:
        separators = _SEPARATOR if norm.whitespace or not keep_spaces else _PUNCT
    else:
        separators = r"\s+" if norm.whitespace or not keep_spaces else None
    if separators is None:
        return text
    text = text.str.replace_all(separators, " " if keep_spaces else "")
    return text.str.strip_chars() if keep_spaces and norm.whitespace else text


def words(text: pl.Series, norm: Normalization) -> pl.Series:
    """A list<string> series: the words of the normalised text (see the module doc)."""
    norm = resolve(norm)
    # one regex pass instead of replace-then-split: same words, less work
    return _folded(text, norm).str.extract_all(_WORD if norm.punctuation else r"\S+")
