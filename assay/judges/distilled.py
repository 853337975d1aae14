"""DistilledJudge: a small trained cross-encoder used as a grounding judge (MiniCheck's idea).

Trained by `assay judge train` (or `train_distilled`) on labelled or LLM-judged rows, it
scores P(grounded) for a response against its context at a small fraction of an LLM judge's
cost. A long context is read as the judge's `select` mode says (every window and the best
counts, MiniCheck's rule; or one window or the best evidence sentences chosen by the claim's
words: cross_encoder.py), never cut off silently. The score is calibrated on the judge's
validation rows when it was trained with some (`judge.json` "calibration").
"""

from __future__ import annotations

import json
import math
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import PrivateAttr

from assay.curate.registry import register
from assay.curate.stage import Outcome, Stage
from assay.judges.base import completion_text
from assay.judges.cross_encoder import SELECT_MODES, ChunkedPairs, score_logits
from assay.judges.grounding import context_text
from assay.judges.llm_judge import Judgement, write_judgements
from assay.judges.registry_dir import find_judge

DTYPES = ("float32", "bfloat16", "int8")


@lru_cache(maxsize=4)
def load_judge(
    path: str, threads: int | None = None, dtype: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(model ready to score, tokenizer, judge.json) of a trained judge folder (cached per
    process). `dtype` overrides the judge's `inference_dtype` (float32, bfloat16, int8)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    meta = json.loads((Path(path) / "judge.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.eval()
    return prepare_model(model, dtype or meta.get("inference_dtype", "float32")), tokenizer, meta


def prepare_model(model: Any, dtype: str) -> Any:
    """The model for inference: as it is (float32), a bfloat16 copy (fast where the CPU
    has AVX512-BF16 or AMX), or a copy with int8 dynamically quantised linear layers (int8
    matmuls use VNNI where the CPU has it)."""
    import copy

    import torch

    if dtype == "float32":
        return model.eval()
    if dtype == "bfloat16":
        return copy.deepcopy(model).to(torch.bfloat16).eval()
    if dtype != "int8":
        raise ValueError(f"inference dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    with warnings.catch_warnings():  # torch.ao's deprecation notice (the API still works)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        ).eval()


def chunker_for(tokenizer: Any, meta: dict[str, Any], select: str | None = None) -> ChunkedPairs:
    """The context reader a judge was trained with (`select` overrides its mode)."""
    return ChunkedPairs(
        tokenizer,
        max_length=int(meta.get("max_length", 256)),
        prompt_tokens=int(meta.get("prompt_tokens", 64)),
        select=select or meta.get("select", "all"),
    )


def judge_logits(
    model: Any, chunker: ChunkedPairs, rows: list[dict[str, Any]], batch_size: int = 32
) -> tuple[list[float], list[str], list[int]]:
    """Raw logits (before calibration), context notes and pieces scored, per row."""
    return score_logits(model, chunker, rows, batch_size)


def calibrated(logit: float, meta: dict[str, Any]) -> float:
    """P(grounded) of a raw logit: the judge's Platt calibration when it has one."""
    cal = meta.get("calibration") or {"a": 1.0, "b": 0.0}
    z = cal["a"] * logit + cal["b"]
    return 1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0)))


@register
class DistilledJudge(Stage):
    """Score responses with a trained grounding cross-encoder (no LLM call).

    `judge` is the name given to `assay judge train` (looked up in `$ASSAY_JUDGES_DIR`,
    default `~/.cache/assay/judges`) or the path of a judge folder.

    Input columns: `context_column` (string or list of strings), `response_column`,
    `prompt_column` (optional; used when the judge was trained with prompts).
    `select` overrides how the judge reads a context longer than its window (`all`, `best`,
    `evidence`; default: the mode it was trained with), `dtype` its inference precision
    (`float32`, `bfloat16` or `int8`; default: the judge's `inference_dtype`).

    Output columns (output_column="distilled"): `distilled_score` (P(grounded), calibrated
    on the judge's validation rows; in `all` mode the best window's),
    `distilled_verdict` ("grounded" / "ungrounded" at `threshold`, else 0.5),
    `distilled_rationale` (how the context was read: "whole context", "best of 3 windows:
    window 2", "evidence: 5 of 31 sentences (...)"), `distilled_chunks` (pieces scored),
    `distilled_error` (null), `distilled_cost` (0.0).
    Rejects (when `threshold` is set): "ungrounded (score 0.12 < 0.5): whole context".

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
    select: str | None = None
    dtype: str | None = None

    _path: Path | None = PrivateAttr(default=None)
    _chunker: ChunkedPairs | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any) -> None:
        if self.select is not None and self.select not in SELECT_MODES:
            raise ValueError(f"select={self.select!r}: use one of {', '.join(SELECT_MODES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: use one of {', '.join(DTYPES)}")
        self._path = find_judge(self.judge)  # a wrong name fails when the recipe is built

    def input_columns(self) -> list[str]:
        cols = [self.context_column, self.response_column]
        return cols + ([self.prompt_column] if self.prompt_column else [])

    def load(self) -> tuple[Any, ChunkedPairs, dict[str, Any]]:
        """(model, context reader, judge.json): loaded once per process (first call pays)."""
        model, tokenizer, meta = load_judge(str(self._path), self.threads, self.dtype)
        if self._chunker is None or self._chunker.tok is not tokenizer:
            self._chunker = chunker_for(tokenizer, meta, self.select)
        return model, self._chunker, meta

    def scores(self, rows: list[dict[str, Any]]) -> list[Judgement]:
        """Judgements for rows with `context`, `prompt` and `response` keys."""
        model, chunker, meta = self.load()
        logits, notes, count = judge_logits(model, chunker, rows, self.batch_size)
        cut = self.threshold if self.threshold is not None else 0.5
        out = []
        for z, note, n in zip(logits, notes, count, strict=True):
            p = calibrated(z, meta)
            verdict = "grounded" if p >= cut else "ungrounded"
            out.append(Judgement(p, verdict, note, extra={"chunks": n}))
        return out

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
