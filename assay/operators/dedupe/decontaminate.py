"""Decontaminate: drop training rows that share an n-gram with a named evaluation set."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from assay.curate.registry import register
from assay.curate.sources import as_source
from assay.curate.stage import Outcome, Stage, split_by_mask
from assay.operators.dedupe.shingles import Shingles, shingle_hashes


class EvalSet(BaseModel):
    """Where one evaluation set's texts come from: exactly one of `texts`, `path`, `hf_dataset`.

    `path` is anything assay reads as a source (Parquet file or folder, JSONL, CSV), so a
    project's own held-out split can be named; `hf_dataset` loads with `datasets`
    (`hf_config`, `split`). `columns` are the columns whose texts count, each on its own.
    """

    model_config = ConfigDict(extra="forbid")

    texts: list[str] | None = None
    path: str | None = None
    hf_dataset: str | None = None
    hf_config: str | None = None
    split: str = "test"
    columns: list[str] = ["text"]

    @model_validator(mode="after")
    def _one_origin(self) -> EvalSet:
        given = [x is not None for x in (self.texts, self.path, self.hf_dataset)]
        if sum(given) != 1:
            raise ValueError("an eval set needs exactly one of texts, path or hf_dataset")
        return self

    def text_columns(self) -> list[pa.Array | pa.ChunkedArray]:
        """The eval set's texts, one array per column (read in batches from files)."""
        if self.texts is not None:
            return [pa.array(self.texts, pa.string())]
        if self.path is not None:
            out: list[pa.Array | pa.ChunkedArray] = []
            for batch in as_source(self.path).record_batches():
                table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                out.extend(table[c] for c in self.columns)
            return out
        import datasets

        data = datasets.load_dataset(self.hf_dataset, self.hf_config, split=self.split)
        return [data.data.table[c] for c in self.columns]


@register
class Decontaminate(Stage):
    """Remove training rows that share a word n-gram (13 by default) with an evaluation set.

    Texts are lower-cased and split into `\\w+` words on both sides; a row is removed when
    any n-gram of any of its `columns` occurs in any eval set (64-bit n-gram hashes, so a
    false match needs a hash collision: ~1e-19 per pair). Texts shorter than `ngram` words
    have no n-gram and never match. No pass over the training data is needed, so the stage
    streams.

    Eval sets are a snapshot: a stage object reads and hashes them the first time it
    processes a batch and keeps those hashes for every later batch and every later run of
    the same object (a pipeline run twice, or resumed in the same process), even if the
    files change. Call `reload_eval_sets()` (or build a new stage) to read them again.

    Input columns: `columns` (strings). Output columns: unchanged.
    Rejects: '13-gram overlap with eval set "gsm8k": "<the matched n-gram>"'.

    Example:
        Decontaminate(columns=["prompt", "response"], eval_sets={
            "gsm8k": {"hf_dataset": "openai/gsm8k", "hf_config": "main",
                      "columns": ["question", "answer"]},
            "heldout": {"path": "data/heldout.parquet", "columns": ["prompt"]},
            "inline": ["a list of texts also works"],
        })
    In a recipe: `{Decontaminate: {columns: [prompt], eval_sets: {heldout: {path: h.parquet}}}}`.
    """

    columns: list[str] = ["text"]
    eval_sets: dict[str, EvalSet]
    ngram: int = Field(13, ge=1)  # 13-grams: GPT-3's and the Llama / OLMo reports' choice

    _eval_hashes: dict[str, np.ndarray] | None = None

    @field_validator("eval_sets", mode="before")
    @classmethod
    def _lists_are_texts(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"texts": v} if isinstance(v, list) else v for k, v in value.items()}
        return value

    def input_columns(self) -> list[str]:
        return list(self.columns)

    def reload_eval_sets(self) -> None:
        """Forget the eval-set snapshot: the next batch reads and hashes them again."""
        self._eval_hashes = None

    def eval_ngrams(self) -> dict[str, np.ndarray]:
        """Sorted unique n-gram hashes of each eval set (read on first use, then kept)."""
        if self._eval_hashes is None:
            loaded = {}
            for name, spec in self.eval_sets.items():
                parts = [
                    np.unique(shingle_hashes(col, self.ngram, short_texts=False).hashes)
                    for col in spec.text_columns()
                ]
                loaded[name] = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.uint64)
            self._eval_hashes = loaded
        return self._eval_hashes

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        n = table.num_rows
        found = np.zeros(n, bool)
        reasons = np.full(n, None, dtype=object)
        for column in self.columns:
            shingles = shingle_hashes(table[column], self.ngram, short_texts=False)
            for name, ngrams in self.eval_ngrams().items():
                docs, starts = _first_hits(shingles, ngrams)
                new = ~found[docs]
                docs, starts = docs[new], starts[new]
                if len(docs) == 0:
                    continue
                found[docs] = True
                reasons[docs] = self._reasons(shingles, docs, starts, name)
        return split_by_mask(self.name, table, ~found, pa.array(reasons, pa.string()))

    def _reasons(
        self, shingles: Shingles, docs: np.ndarray, starts: np.ndarray, name: str
    ) -> list[str]:
        """'13-gram overlap with eval set "x": "<words>"' for each matched row."""
        frame = pl.DataFrame({"tokens": shingles.tokens.gather(docs), "start": starts})
        ngram_text = frame.select(
            pl.col("tokens").list.slice(pl.col("start"), self.ngram).list.join(" ")
        ).to_series()
        prefix = f'{self.ngram}-gram overlap with eval set "{name}": "'
        return (prefix + ngram_text + '"').to_list()


def _first_hits(shingles: Shingles, ngrams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(documents with a shingle in `ngrams`, token position of each one's first such shingle)."""
    if len(ngrams) == 0 or len(shingles.hashes) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pos = np.searchsorted(ngrams, shingles.hashes)
    pos[pos == len(ngrams)] = 0
    hits = np.flatnonzero(ngrams[pos] == shingles.hashes)
    if len(hits) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    doc_of = shingles.doc_of()[hits]
    docs, first = np.unique(doc_of, return_index=True)
    return docs, hits[first] - shingles.offsets[docs]
