"""DistilledJudge: a small trained cross-encoder used as a grounding judge (MiniCheck's idea).

Trained by `assay judge train` (or `train_distilled`) on labelled or LLM-judged rows, it
scores P(grounded) for a response against its context at a small fraction of an LLM judge's
cost. Long contexts are scored chunk by chunk and the best chunk counts (cross_encoder.py).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import PrivateAttr

from assay.curate.registry import register
from assay.curate.stage import Outcome, Stage
from assay.judges.base import completion_text
from assay.judges.cross_encoder import ChunkedPairs, score_rows
from assay.judges.grounding import context_text
from assay.judges.llm_judge import Judgement, write_judgements
from assay.judges.registry_dir import find_judge


@lru_cache(maxsize=4)
def load_judge(path: str, threads: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, judge.json) of a trained judge folder (cached per process)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    meta = json.loads((Path(path) / "judge.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    return model, tokenizer, meta


@register
class DistilledJudge(Stage):
    """Score responses with a trained grounding cross-encoder (no LLM call).

    `judge` is the name given to `assay judge train` (looked up in `$ASSAY_JUDGES_DIR`,
    default `~/.cache/assay/judges`) or the path of a judge folder.

    Input columns: `context_column` (string or list of strings), `response_column`,
    `prompt_column` (optional; used when the judge was trained with prompts).
    Output columns (output_column="distilled"): `distilled_score` (P(grounded), the best
    chunk's), `distilled_verdict` ("grounded" / "ungrounded" at `threshold`, else 0.5),
    `distilled_rationale` ("best of 3 chunks: 2"), `distilled_chunks` (int),
    `distilled_error` (null), `distilled_cost` (0.0).
    Rejects (when `threshold` is set): "ungrounded (score 0.12 < 0.5): best of 1 chunks: 0".

    Example: `DistilledJudge(judge="halueval-dialogue", context_column="knowledge",
    response_column="generation", prompt_column="history", threshold=0.5)`.
    """

    judge: str
    context_column: str = "context"
    response_column: str = "generation"
    prompt_column: str | None = None
    output_column: str = "distilled"
    threshold: float | None = None
    batch_size: int = 32
    threads: int | None = None

    _path: Path | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        self._path = find_judge(self.judge)  # a wrong name fails when the recipe is built

    def input_columns(self) -> list[str]:
        cols = [self.context_column, self.response_column]
        return cols + ([self.prompt_column] if self.prompt_column else [])

    def scores(self, rows: list[dict[str, Any]]) -> list[Judgement]:
        """Judgements for rows with `context`, `prompt` and `response` keys."""
        model, tokenizer, meta = load_judge(str(self._path), self.threads)
        pairs = ChunkedPairs(tokenizer, max_length=int(meta.get("max_length", 256)))
        probs, best, count = score_rows(model, pairs, rows, self.batch_size)
        cut = self.threshold if self.threshold is not None else 0.5
        return [
            Judgement(
                p,
                "grounded" if p >= cut else "ungrounded",
                f"best of {n} chunks: {b}",
                extra={"chunks": n},
            )
            for p, b, n in zip(probs, best, count, strict=True)
        ]

    def process(self, table: pa.Table) -> pa.Table | Outcome:
        rows = [
            {
                "context": context_text(r[self.context_column]),
                "prompt": str(r[self.prompt_column] or "") if self.prompt_column else "",
                "response": str(r[self.response_column] or ""),
            }
            for r in table.select(self.input_columns()).to_pylist()
        ]
        return write_judgements(
            self.name,
            table,
            self.scores(rows),
            self.output_column,
            self.threshold,
            types={"chunks": pa.int64()},
        )

    def reward(
        self, prompts: list[Any], completions: list[Any], **columns: Any
    ) -> list[float | None]:
        """TRL reward form: P(grounded) of each completion against `context_column`."""
        if self.context_column not in columns:
            raise KeyError(
                f"DistilledJudge.reward needs the dataset column {self.context_column!r}"
            )
        rows = [
            {
                "context": context_text(columns[self.context_column][i]),
                "prompt": completion_text(p) if self.prompt_column else "",
                "response": completion_text(c),
            }
            for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
        ]
        return [j.score for j in self.scores(rows)]
