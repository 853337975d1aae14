"""Optional GPU backend: vLLM's offline engine behind the same queue as the local backend.

`pip install 'assay[vllm]'` on a CUDA machine, then `VllmBackend("smollm2-135m")` (or any
alias, model directory or `base+adapter` name from the registry). Requests queue exactly as
in `LocalBackend`; each batch the scheduler forms goes to one `LLM.generate` call, where
vLLM's own continuous batching and paged attention take over. Prompts are rendered with the
same chat-format code as the local backend (so tools and tool-call parsing match), LoRA
adapters become `LoRARequest`s (one per adapter path and weights fingerprint, so an adapter
retrained under its old name is loaded afresh), and `response_format` becomes vLLM's
structured outputs.

Not exercised by the CPU test suite: `tests/test_local_vllm.py` runs only where `vllm`
imports and CUDA is present.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from assay.curate.llm.types import ChatRequest, ChatResponse, sample_seed
from assay.models.chat_format import chat_response, decoding_format, render_prompt
from assay.models.constrained import harden_schema, schema_of
from assay.models.local_backend import LocalBackend, _Job
from assay.models.registry import materialize, weights_fingerprint
from assay.models.request_items import max_new_tokens


class VllmBackend(LocalBackend):
    """`LocalBackend`'s queue and adapters, with vLLM's engine doing the generation.

    `engine_kwargs` go to `vllm.LLM` (e.g. `gpu_memory_utilization`, `max_model_len`).
    """

    def __init__(self, model: str, *, max_lora_rank: int = 64, **options: Any) -> None:
        self.engine_kwargs = options.pop("engine_kwargs", {})
        self.max_lora_rank = max_lora_rank
        options.setdefault("max_batch_size", 256)
        super().__init__(model, **options)
        # vLLM keeps a loaded adapter by its int id: one id per (path, weights), see lora_key
        self._lora_ids: dict[str, int] = {}

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            from vllm import LLM

            llm = LLM(
                model=str(materialize(self.spec)),
                enable_lora=True,
                max_lora_rank=self.max_lora_rank,
                **self.engine_kwargs,
            )
            self._tokenizer = llm.get_tokenizer()
            self._model = llm

    def _run_batch(self, jobs: list[_Job]) -> None:
        jobs = self._claim(jobs)
        if not jobs:
            return
        try:
            prompts, params, loras = [], [], []
            for job in jobs:
                prompt, sampling, lora = self._vllm_request(job.request)
                prompts.append(prompt)
                params.append(sampling)
                loras.append(lora)
            outputs = self._model.generate(prompts, params, lora_request=loras, use_tqdm=False)
        except BaseException as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        finished = time.perf_counter()
        for job, output in zip(jobs, outputs, strict=True):
            job.future.set_result(self._vllm_response(job, output, finished))

    def _vllm_request(self, request: ChatRequest) -> tuple[str, Any, Any]:
        from vllm import SamplingParams

        p = request.params
        tools = list(request.tools) if request.tools else None
        prompt = render_prompt(self._tokenizer, list(request.messages), tools)
        stop = p.get("stop") or []
        kwargs: dict[str, Any] = {
            "max_tokens": max_new_tokens(p),
            "temperature": 1.0 if p.get("temperature") is None else float(p["temperature"]),
            "top_p": 1.0 if p.get("top_p") is None else float(p["top_p"]),
            "stop": [stop] if isinstance(stop, str) else list(stop),
            "ignore_eos": bool(p.get("ignore_eos", False)),
        }
        if p.get("top_k"):
            kwargs["top_k"] = int(p["top_k"])
        if p.get("seed") is not None:
            kwargs["seed"] = sample_seed(int(p["seed"]), request.sample_index)
        response_format = decoding_format(request)
        if response_format:
            kwargs.update(_structured(schema_of(response_format)))
        adapter = self.adapter_of(request.model)
        lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(*self.lora_request_args(adapter))
        return prompt, SamplingParams(**kwargs), lora

    def lora_request_args(self, adapter: str) -> tuple[str, int, str]:
        """`(lora_name, lora_int_id, lora_path)` for the adapter's files as they are now.

        Keyed by `lora_key`, not by the adapter's name: an adapter retrained in place or
        registered again under its old name gets a new id (vLLM loads it afresh instead of
        serving the weights it cached under the old id); the same files under two names
        share one.
        """
        directory = self.adapter_dirs[adapter]
        key = lora_key(directory)
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        return f"{directory.name}@{key.rsplit('@', 1)[1]}", lora_id, str(directory.resolve())

    def _vllm_response(self, job: _Job, output: Any, finished: float) -> ChatResponse:
        choice = output.outputs[0]
        return chat_response(
            choice.text,
            choice.finish_reason or "stop",
            bool(job.request.tools),
            len(output.prompt_token_ids or []),
            len(choice.token_ids),
            finished - job.queued_at,
        )


def lora_key(directory: str | Path) -> str:
    """`<resolved path>@<weights fingerprint>`: which adapter weights a LoRA request serves.

    The fingerprint is the one the request cache's identity uses (`weights_fingerprint`:
    content hashes, memoised per file stat), so a key changes exactly when the files do.
    """
    path = Path(directory).resolve()
    return f"{path}@{weights_fingerprint(path)}"


def _structured(schema: dict[str, Any] | None) -> dict[str, Any]:
    """SamplingParams keywords for a JSON schema (vLLM >= 0.10 names, else the older ones)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        if schema is None:
            return {"structured_outputs": StructuredOutputsParams(json_object=True)}
        return {"structured_outputs": StructuredOutputsParams(json=harden_schema(schema))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        if schema is None:
            return {"guided_decoding": GuidedDecodingParams(json_object=True)}
        return {"guided_decoding": GuidedDecodingParams(json=harden_schema(schema))}
