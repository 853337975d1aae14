"""Constrained decoding: schema-valid rate of the embedded model with and without constraints.

200 structured prompts (5 schema families x 40 subjects), each asking for a JSON object
and showing the schema in the prompt. Unconstrained answers are scored two ways: strict (the
whole answer parses and validates) and lenient (the first `{...}` span in the answer, with
code fences ignored, parses and validates). Constrained answers use `response_format` with
the same schema (xgrammar). Same model, same prompts, same sampling, same run.

    nice python bench/constrained.py --prompts 200 --max-tokens 96 --threads 2
"""

from __future__ import annotations

import argparse
import json
import re
import time

import jsonschema
import torch

from assay.curate.llm.types import ChatRequest
from assay.models.local_backend import LocalBackend

SHORT = {"type": "string", "maxLength": 24}
FAMILIES = {
    "person": {
        "type": "object",
        "properties": {
            "name": SHORT,
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": SHORT,
        },
        "required": ["name", "age", "city"],
        "additionalProperties": False,
    },
    "product": {
        "type": "object",
        "properties": {
            "title": SHORT,
            "price": {"type": "number", "minimum": 0},
            "in_stock": {"type": "boolean"},
        },
        "required": ["title", "price", "in_stock"],
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "properties": {
            "name": SHORT,
            "kind": {"enum": ["concert", "talk", "match", "fair"]},
            "attendees": {"type": "integer", "minimum": 0},
        },
        "required": ["name", "kind", "attendees"],
        "additionalProperties": False,
    },
    "book": {
        "type": "object",
        "properties": {
            "title": SHORT,
            "author": SHORT,
            "tags": {"type": "array", "items": SHORT, "minItems": 1, "maxItems": 3},
        },
        "required": ["title", "author", "tags"],
        "additionalProperties": False,
    },
    "review": {
        "type": "object",
        "properties": {
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "summary": {"type": "string", "maxLength": 60},
            "recommend": {"type": "boolean"},
        },
        "required": ["stars", "summary", "recommend"],
        "additionalProperties": False,
    },
}
SUBJECTS = [
    "a baker",
    "a pilot",
    "a chess club",
    "a bicycle",
    "a teapot",
    "a jazz band",
    "a library",
    "a garden",
    "a robot",
    "a lighthouse",
    "a marathon",
    "a volcano tour",
    "a fishing trip",
    "a museum",
    "a bakery",
    "a violin",
    "a startup",
    "a farmer",
    "a comet",
    "a cafe",
    "a school",
    "a mountain",
    "a river cruise",
    "a painter",
    "a laptop",
    "a poem",
    "a ferry",
    "a soccer team",
    "a dentist",
    "a film",
    "a candle",
    "a map",
    "a zoo",
    "a tailor",
    "a bridge",
    "a chef",
    "a kite",
    "a harbor",
    "a nurse",
    "an orchestra",
]


def structured_prompts(count: int) -> list[tuple[str, dict, str]]:
    out = []
    families = list(FAMILIES.items())
    for i in range(count):
        family, schema = families[i % len(families)]
        subject = SUBJECTS[(i // len(families)) % len(SUBJECTS)]
        text = (
            f"Describe {subject} as a {family} in JSON. Reply with only a JSON object that "
            f"follows this JSON schema:\n{json.dumps(schema)}"
        )
        out.append((family, schema, text))
    return out


def valid(value: object, schema: dict) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def strict_ok(text: str | None, schema: dict) -> bool:
    try:
        return valid(json.loads(text or ""), schema)
    except json.JSONDecodeError:
        return False


def lenient_ok(text: str | None, schema: dict) -> bool:
    match = re.search(r"\{.*\}", (text or "").replace("```json", "").replace("```", ""), re.S)
    if not match:
        return False
    try:
        return valid(json.loads(match.group(0)), schema)
    except json.JSONDecodeError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = LocalBackend("smollm2-135m", threads=args.threads, device="cpu")
    backend.load()
    items = structured_prompts(args.prompts)
    params = {"temperature": 0.7, "top_p": 0.95, "seed": 1, "max_tokens": args.max_tokens}

    def ask(constrained: bool) -> tuple[list, float]:
        reqs = [
            ChatRequest(
                "local/smollm2-135m",
                ({"role": "user", "content": text},),
                params,
                response_format=schema if constrained else None,
                sample_index=i,
            )
            for i, (_, schema, text) in enumerate(items)
        ]
        start = time.perf_counter()
        responses = backend.complete_many(reqs)
        return responses, time.perf_counter() - start

    free, free_s = ask(constrained=False)
    forced, forced_s = ask(constrained=True)
    n = len(items)
    strict = sum(strict_ok(r.text, s) for r, (_, s, _) in zip(free, items, strict=True))
    lenient = sum(lenient_ok(r.text, s) for r, (_, s, _) in zip(free, items, strict=True))
    ok = sum(strict_ok(r.text, s) for r, (_, s, _) in zip(forced, items, strict=True))
    cut = sum(r.finish_reason == "length" for r in forced)
    print(f"prompts {n}, max_tokens {args.max_tokens}, temperature 0.7, top_p 0.95")
    print("| decoding | schema-valid (strict) | schema-valid (lenient: first {...}) | seconds |")
    print("|---|---|---|---|")
    print(
        f"| unconstrained | {strict}/{n} ({100 * strict / n:.1f}%) | {lenient}/{n} "
        f"({100 * lenient / n:.1f}%) | {free_s:.0f} |"
    )
    print(f"| constrained (xgrammar) | {ok}/{n} ({100 * ok / n:.1f}%) | - | {forced_s:.0f} |")
    print(f"constrained answers cut by max_tokens: {cut}")
    print("example unconstrained:", repr(free[0].text[:200]))
    print("example constrained:", repr(forced[0].text[:200]))
    backend.close()


if __name__ == "__main__":
    main()
