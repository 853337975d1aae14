"""The near-duplicate benchmark's corpus: real documents with planted duplicates whose
Jaccard is measured on normalised words (see bench/dedupe.py for how it is used).

Documents: Python docstrings (the standard library and the venv's site-packages, read with
`ast`, nothing imported), Debian man pages (roff markup stripped) and Debian package docs
(/usr/share/doc: README, NEWS, changelogs, copyright files), cut into 150-400 word chunks,
then exact-deduplicated on their normalised words.

Ground truth: the word 5-gram Jaccard of lower-cased alphanumeric words. `normal_words` is
written here from `unicodedata` alone (NFKC, lower case, format characters deleted,
punctuation/symbols/control characters turned into spaces, split at whitespace), so the
benchmark does not grade assay with assay's own code (tests/test_dedupe_normalize.py checks
assay's polars version against the same rule).

Planted variants of sources with >= 200 words, one bucket each:
- `exact`: a copy.
- `case_ws`: 30% of the words upper-cased, spaces doubled.
- `case_punct`: the same normalised words written differently: random case, punctuation
  added or dropped at word ends, a quarter of the separators turned into "-", "_", " / ",
  " — ", tabs, newlines, double or no-break spaces, straight quotes made curly, and 1% of the words in a
  compatibility form (full-width letters, or an "fi" ligature). Normalised Jaccard 1.
- `j0.95` ... `j0.60`: the source's normalised words with m substitutions spaced >= 5
  words apart, each removing 5 shingles and adding 5, J = (n - 5m) / (n + 5m), with m the
  largest whose measured J is >= the target (so j0.80 pairs sit at 0.80-0.82); written with mild noise (30% of words upper-cased,
  10% followed by a punctuation mark) so raw and normalised words differ as in real copies.
The exact normalised Jaccard of every pair is recomputed and recorded.
"""

from __future__ import annotations

import ast
import gzip
import random
import re
import sys
import unicodedata
from functools import cache
from pathlib import Path

BUCKETS = {
    "exact": 1.0,
    "case_ws": 1.0,
    "case_punct": 1.0,
    "j0.95": 0.95,
    "j0.90": 0.9,
    "j0.80": 0.8,
    "j0.70": 0.7,
    "j0.60": 0.6,
}
NGRAM = 5


# ---------------------------------------------------------------- ground-truth words


@cache
def _separators() -> dict[int, str | None]:
    """str.translate table: P*, S*, Cc -> space; Cf -> deleted (built once, C-speed use)."""
    table: dict[int, str | None] = {}
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat == "Cf":
            table[cp] = None
        elif cat[0] in "PS" or cat == "Cc":
            table[cp] = " "
    return table


def normal_words(text: str) -> list[str]:
    """Lower-cased alphanumeric words after NFKC (the benchmark's ground truth)."""
    return unicodedata.normalize("NFKC", text).lower().translate(_separators()).split()


def shingles(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = normal_words(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


# ---------------------------------------------------------------- real documents


def docstrings(roots: list[Path], limit: int) -> list[str]:
    out: list[str] = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError, RecursionError):
                continue
            for node in ast.walk(tree):
                if isinstance(
                    node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
                ):
                    doc = ast.get_docstring(node)
                    if doc and len(doc.split()) >= 30:
                        out.append(doc)
            if len(out) >= limit:
                return out
    return out


def _chunks(text: str, out: list[str], size: int = 300, least: int = 150) -> None:
    words = text.split()
    for i in range(0, len(words), size):
        chunk = words[i : i + size]
        if len(chunk) >= least:
            out.append(" ".join(chunk))


def man_pages(limit: int) -> list[str]:
    out: list[str] = []
    for path in sorted(Path("/usr/share/man").rglob("*.gz")):
        try:
            raw = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        lines = [ln for ln in raw.splitlines() if not ln.startswith((".", "'\\\""))]
        _chunks(re.sub(r"\\f[BIRP]|\\\(..|\\[-e&]|\\", " ", " ".join(lines)), out)
        if len(out) >= limit:
            break
    return out[:limit]


def debian_docs(limit: int) -> list[str]:
    """README / NEWS / changelog / copyright files under /usr/share/doc, plain or gzipped."""
    out: list[str] = []
    wanted = re.compile(r"^(README|NEWS|changelog|copyright|AUTHORS|TODO)", re.I)
    for path in sorted(Path("/usr/share/doc").rglob("*")):
        if not path.is_file() or not wanted.match(path.name):
            continue
        try:
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
        except (OSError, EOFError):
            continue
        _chunks(data.decode("utf-8", "replace"), out)
        if len(out) >= limit:
            break
    return out[:limit]


def real_documents(n_base: int) -> list[str]:
    """About n_base distinct documents: docstrings, then man pages, then Debian docs."""
    import os

    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    texts = docstrings([Path(os.__file__).parent, site / "site-packages"], n_base // 2)
    texts += man_pages(int(n_base * 0.35))
    texts += debian_docs(n_base)
    seen, base = set(), []
    for t in texts:
        key = " ".join(normal_words(t))
        if key and key not in seen:
            seen.add(key)
            base.append(t)
    return base[:n_base]


# ---------------------------------------------------------------- planted variants

_SEPARATORS = [" "] * 24 + ["  ", "\t", "\n", "-", "_", " / ", " — ", "\u00a0"]
_ENDS = ["", "", "", "", ",", ".", ";", ":", "!", "?", ")", '"']


def _compat(word: str) -> str:
    if "fi" in word:
        return word.replace("fi", "\ufb01", 1)
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)


def _upper(tok: str) -> str:
    """Upper case where that is a pure case change ("ß".upper() is "SS": not one)."""
    up = tok.upper()
    return up if up.lower() == tok.lower() else tok


def noisy(tokens: list[str], rng: random.Random, heavy: bool) -> str:
    """Tokens re-written with the same normalised words (see the module docstring)."""
    out = []
    for i, tok in enumerate(tokens):
        if rng.random() < 0.3:
            tok = _upper(tok)
        if heavy:
            if rng.random() < 0.3:
                tok = tok.strip(",.;:!?\"'()[]")
            tok = tok.replace("'", "\u2019").replace('"', "\u201d")
            if rng.random() < 0.01:
                tok = _compat(tok)
            tok = (rng.choice(_ENDS) if rng.random() < 0.2 else "") + tok + rng.choice(_ENDS)
        elif rng.random() < 0.1:
            tok += rng.choice(",.;:!?")
        sep = rng.choice(_SEPARATORS) if heavy else " "
        out.append(tok if i == 0 else sep + tok)
    return "".join(out)


def substituted(text: str, target: float, rng: random.Random) -> list[str]:
    """The normalised words of `text` with the most substitutions that keep J >= target.

    Starts from m = n (1 - t) / (5 (1 + t)) substitutions NGRAM words apart (exact when
    every 5-gram is distinct) and takes them back one at a time, last first, while the
    measured Jaccard is below the target (repeated 5-grams make it lower than the formula).
    """
    words = normal_words(text)
    n = len(words) - NGRAM + 1
    m = max(1, int(n * (1 - target) / (NGRAM * (1 + target))) + 1)
    slots = rng.sample(range(1, (len(words) - NGRAM) // NGRAM), m)
    source = shingles(" ".join(words))
    while True:
        edited = list(words)
        for s in slots:
            edited[s * NGRAM] = f"zq{s}x{rng.randrange(10**9)}"
        got = shingles(" ".join(edited))
        if len(slots) == 1 or len(source & got) / len(source | got) >= target:
            return edited
        slots.pop()


def variant(text: str, kind: str, rng: random.Random) -> str:
    if kind == "exact":
        return text
    if kind == "case_ws":
        return "  ".join(_upper(w) if rng.random() < 0.3 else w for w in text.split()) + "\n"
    if kind == "case_punct":
        return noisy(text.split(), rng, heavy=True)
    return noisy(substituted(text, BUCKETS[kind], rng), rng, heavy=False)


def build(n_per_bucket: int, n_base: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """corpus-<tag>.parquet (id, text) and truth-<tag>.parquet (source, variant, bucket,
    jaccard), built once and reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{n_base}-{n_per_bucket}"
    corpus, truth = folder / f"corpus-{tag}.parquet", folder / f"truth-{tag}.parquet"
    if corpus.exists() and truth.exists():
        return corpus, truth
    base = real_documents(n_base)
    rng = random.Random(seed)
    long_ones = [i for i, t in enumerate(base) if len(normal_words(t)) >= 200]
    sources = rng.sample(long_ones, n_per_bucket * len(BUCKETS))
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(base)]
    pairs = []
    for k, kind in enumerate(BUCKETS):
        for src in sources[k * n_per_bucket : (k + 1) * n_per_bucket]:
            vid = f"v{len(pairs)}"
            text = variant(base[src], kind, rng)
            rows.append({"id": vid, "text": text})
            pairs.append(
                {
                    "source": f"d{src}",
                    "variant": vid,
                    "bucket": kind,
                    "jaccard": jaccard(base[src], text),
                }
            )
    rng.shuffle(rows)
    pq.write_table(pa.Table.from_pylist(rows), corpus)
    pq.write_table(pa.Table.from_pylist(pairs), truth)
    return corpus, truth
