"""The optional vLLM backend; runs only where vllm imports and a CUDA GPU is present."""

from __future__ import annotations

import json

import pytest

vllm = pytest.importorskip("vllm")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("the vLLM backend needs a CUDA GPU", allow_module_level=True)

from assay.curate.llm.types import ChatRequest  # noqa: E402
from assay.models.vllm_backend import VllmBackend  # noqa: E402

pytestmark = pytest.mark.integration


def test_vllm_backend_batches_and_constrains_json():
    backend = VllmBackend("smollm2-135m", engine_kwargs={"gpu_memory_utilization": 0.3})
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    requests = [
        ChatRequest(
            model="local/smollm2-135m",
            messages=({"role": "user", "content": f"Give the number {i} as JSON."},),
            params={"temperature": 0.7, "max_tokens": 20, "seed": i},
            response_format=schema,
        )
        for i in range(8)
    ]
    responses = backend.complete_many(requests)
    assert backend.batches_run <= 2
    for response in responses:
        assert isinstance(json.loads(response.text)["n"], int)
    backend.close()
