"""The embedded SmolLM2-135M end to end (slow: marked integration).

The first run converts the GGUF weights into the model cache (~30-60 s); later runs load the
cached safetensors in seconds.
"""

from __future__ import annotations

import json

import jsonschema
import pyarrow as pa
import pytest

from assay.curate.llm.types import ChatRequest
from assay.curate.pipeline import Pipeline
from assay.models.registry import EMBEDDED_ALIAS, converted_dir, embedded_gguf_path
from assay.models.shared_backends import get_local_backend, register_local_backend
from assay.operators.generate import Generate

pytestmark = pytest.mark.integration

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def backend():
    backend = get_local_backend(f"local/{EMBEDDED_ALIAS}", threads=2)
    backend.load()
    return backend


def test_embedded_model_is_converted_once_into_the_cache(backend):
    cached = converted_dir(embedded_gguf_path())
    assert (cached / "model.safetensors").exists() and (cached / "tokenizer.json").exists()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    assert backend.model.config.num_hidden_layers == 30


def test_generate_stage_runs_on_the_local_model_in_a_pipeline(backend, workspace):
    register_local_backend()
    rows = pa.table({"id": ["a", "b", "c"], "q": ["2+2", "3+5", "10+1"]})
    stage = Generate(
        model=f"local/{EMBEDDED_ALIAS}",
        prompt="What is {{ q }}? Reply with only the number.",
        temperature=0.0,
        max_tokens=12,
    )
    result = Pipeline([stage]).run(rows, workspace=workspace, progress="quiet")
    out = result.to_polars().sort("id")
    assert out["generation"].null_count() == 0
    assert all(len(text) > 0 for text in out["generation"])
    assert set(out["generation_finish_reason"]) <= {"stop", "length"}
    assert "4" in out["generation"][0]


def test_constrained_json_from_the_embedded_model_is_always_valid(backend):
    prompts = [f"Invent a person who likes {topic}. Answer in JSON." for topic in ("chess", "tea")]
    requests = [
        ChatRequest(
            model=f"local/{EMBEDDED_ALIAS}",
            messages=({"role": "user", "content": p},),
            params={"temperature": 1.0, "seed": 11, "max_tokens": 80},
            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
            sample_index=k,
        )
        for p in prompts
        for k in range(4)
    ]
    for response in backend.complete_many(requests):
        assert response.finish_reason == "stop", response.text
        jsonschema.validate(json.loads(response.text), PERSON)
