"""The in-process backend for `local/<alias>` model strings: batched generation on CPU or CUDA.

Many concurrent `complete()` calls become one padded batch: each call queues a job and
awaits its future; one scheduler thread takes every queued job (up to `max_batch_size`,
waiting a few milliseconds for stragglers), runs them through one decode loop
(`batch_generate.generate_batch`) and resolves the futures. While a batch runs, the event
loop keeps queueing, so the next batch is ready when the CPU frees up.

Requests may name a LoRA adapter (`local/smollm2-135m+sql-intern`); adapters are loaded on
first use and rows for different adapters share a batch (`multi_lora.py`). Registry adapters
are re-read when `registry.json` changes and fingerprinted (`weights_id`, in the cache key):
a retrained adapter re-registered under its old name is loaded afresh and answers anew.
`response_format` turns on constrained decoding (JSON schema, xgrammar); `tools` go through
the chat template and the model's `<tool_call>` output is parsed into OpenAI-style
`tool_calls`.

Generation parameters are read from `ChatRequest.params` by `request_items.py`
(`max_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `ignore_eos`). The `n`
samples of one prompt arrive as separate requests with distinct `sample_index`, which is
mixed into the seed so seeded samples differ.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assay.curate.llm.types import ChatRequest, ChatResponse, InvalidRequestError
from assay.models.chat_format import chat_response, decoding_format
from assay.models.registry import (
    ADAPTER_SEPARATOR,
    ModelRegistry,
    ModelSpec,
    load_model,
    weights_fingerprint,
)
from assay.models.request_items import generation_item

if TYPE_CHECKING:  # torch is imported only when a batch runs, so registering stays cheap
    from assay.models.batch_generate import GenerationItem, GenerationResult

LOCAL_PREFIX = "local/"


@dataclass
class _Job:
    request: ChatRequest
    future: concurrent.futures.Future[ChatResponse]
    queued_at: float


class LocalBackend:
    """A base model (plus LoRA adapters) answering `ChatRequest`s in batches.

    `model`: an alias, model directory or GGUF path (see `models.py`). `adapters`: extra
    adapter name -> directory beyond the registry's `model+name` entries. `max_batch_size`:
    rows per forward pass (32 is where the 135M model's CPU tokens/s stops rising much).
    `gather_s`: how long the scheduler waits for more jobs before starting a partial batch.
    `threads`: torch intra-op threads (None leaves torch's default).
    """

    def __init__(
        self,
        model: str,
        *,
        adapters: dict[str, str | Path] | None = None,
        device: str | None = None,
        max_batch_size: int = 32,
        gather_s: float = 0.005,
        threads: int | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        self.registry = registry or ModelRegistry.load()
        self.spec: ModelSpec = self.registry.resolve(model)
        if self.spec.adapter is not None:
            raise ValueError(f"{model!r} names an adapter; give the base model to LocalBackend")
        self.name = self.spec.name
        self.device = device
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s
        self.threads = threads
        self.adapter_dirs: dict[str, Path] = {k: Path(v) for k, v in (adapters or {}).items()}
        self._given_adapters = set(self.adapter_dirs)  # the rest come from the registry
        self._base_fingerprint: str | None = None
        self._lora: Any = None  # multi_lora.MultiLora, created with the first adapter
        self._model: Any = None
        self._tokenizer: Any = None
        self._grammars: Any = None
        self._eos: set[int] = set()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._cancel = threading.Event()
        _open_backends.add(self)
        self._start_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.batches_run = 0
        self.largest_batch = 0
        self.most_adapters_in_batch = 0  # distinct adapters (base counts) in one forward pass

    # -- public API ---------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """Queue the request for the next batch and wait for its answer."""
        future = self.submit(request)
        return await asyncio.wrap_future(future)

    def submit(self, request: ChatRequest) -> concurrent.futures.Future[ChatResponse]:
        """Queue a request from any thread; the future resolves when its batch is done."""
        self.adapter_of(request.model)  # fail fast on unknown adapters
        self._ensure_worker()
        future: concurrent.futures.Future[ChatResponse] = concurrent.futures.Future()
        self._queue.put(_Job(request, future, time.perf_counter()))
        return future

    def complete_many(self, requests: list[ChatRequest]) -> list[ChatResponse]:
        """Blocking convenience: answer a list of requests (batched), in order."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def adapter_names(self) -> list[str]:
        """Adapters this backend can serve: given ones plus the registry's for this base."""
        prefix = self.name + ADAPTER_SEPARATOR
        registered = [
            k.removeprefix(prefix) for k in self.registry.adapters if k.startswith(prefix)
        ]
        return sorted({*self.adapter_dirs, *registered})

    def adapter_of(self, model: str) -> str | None:
        """The adapter a request's model string names (None for the base model)."""
        name = model.removeprefix(LOCAL_PREFIX)
        if name == self.name or name == str(self.spec.source):
            return None
        base, sep, adapter = name.rpartition(ADAPTER_SEPARATOR)
        if not sep:
            adapter, base = name, self.name
        if base != self.name:
            raise ValueError(f"model {model!r} is not served by the backend of {self.name!r}")
        if adapter not in self._given_adapters:
            self.registry = self.registry.refreshed()  # a trainer may have re-registered it
            full = f"{self.name}{ADAPTER_SEPARATOR}{adapter}"
            if full not in self.registry.adapters:
                raise ValueError(f"unknown adapter {adapter!r} for {self.name!r}")
            self.adapter_dirs[adapter] = Path(self.registry.adapters[full])
        return adapter

    def weights_id(self, model: str) -> str:
        """A fingerprint of the base model's files (+ the adapter's): in the cache key."""
        if self._base_fingerprint is None:
            self._base_fingerprint = weights_fingerprint(self.spec.source)
        adapter = self.adapter_of(model)
        if adapter is None:
            return self._base_fingerprint
        return f"{self._base_fingerprint}+{weights_fingerprint(self.adapter_dirs[adapter])}"

    def load(self) -> None:
        """Load the base model now (otherwise the first batch does it)."""
        self._ensure_loaded()

    def close(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop the scheduler thread: queued jobs are answered first, or with `cancel` the
        batch being decoded stops before its next step and every job not yet answered
        fails with `GenerationCancelled` (the backend then answers no more). `timeout`:
        seconds to wait for the thread (None: until it stops)."""
        if cancel:
            self._cancel.set()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout)
            if not self._worker.is_alive():
                self._worker = None

    @property
    def model(self) -> Any:
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self._ensure_loaded()
        return self._tokenizer

    # -- scheduler ----------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._start_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._run, name=f"assay-local-{self.name}", daemon=True
                )
                self._worker.start()

    def _run(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.gather_s
            stop = False
            while len(batch) < self.max_batch_size:
                timeout = deadline - time.perf_counter()
                try:
                    job = (
                        self._queue.get(timeout=timeout)
                        if timeout > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            try:
                self._run_batch(batch)
            except BaseException as exc:  # the worker must outlive any batch
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            if stop:
                return

    def _claim(self, jobs: list[_Job]) -> list[_Job]:
        """The jobs still wanted, with the model loaded; [] (every waiter answered) if not."""
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return []
        if self._cancel.is_set():
            from assay.models.decode_rows import GenerationCancelled

            for job in jobs:
                job.future.set_exception(GenerationCancelled("the local backend is closing"))
            return []
        try:
            self._ensure_loaded()
        except BaseException as exc:  # answer every waiter, then keep serving
            for job in jobs:
                job.future.set_exception(exc)
            return []
        return jobs

    def _run_batch(self, jobs: list[_Job]) -> None:
        from assay.models.batch_generate import generate_batch

        jobs = self._claim(jobs)
        ready, items, prompts = [], [], []
        for job in jobs:
            try:  # a bad request (schema, adapter, template) fails alone, not its batch
                item, prompt_len = self._item_for(job.request)
            except Exception as exc:
                # never retried: the same request fails the same way every time
                job.future.set_exception(InvalidRequestError(f"{type(exc).__name__}: {exc}"))
                continue
            ready.append(job)
            items.append(item)
            prompts.append(prompt_len)
        if not ready:
            return
        try:
            results = generate_batch(
                self._model,
                self._tokenizer,
                items,
                self._eos,
                adapters=self._lora,
                cancel=self._cancel,
            )
        except BaseException as exc:
            for job in ready:
                job.future.set_exception(exc)
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(ready))
        adapters_here = {item.adapter for item in items}
        self.most_adapters_in_batch = max(self.most_adapters_in_batch, len(adapters_here))
        finished = time.perf_counter()
        for job, result, prompt_len in zip(ready, results, prompts, strict=True):
            try:  # a response that cannot be built (e.g. unparseable tool call) fails alone
                job.future.set_result(self._response(job, result, prompt_len, finished))
            except Exception as exc:
                job.future.set_exception(InvalidRequestError(f"{type(exc).__name__}: {exc}"))

    # -- model and requests -------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            model, tokenizer = load_model(self.spec, device=self.device)
            eos = tokenizer.eos_token_id
            ids = {eos} if eos is not None else set()
            configured = getattr(model.generation_config, "eos_token_id", None)
            if isinstance(configured, int):
                ids.add(configured)
            elif configured:
                ids.update(configured)
            self._eos = ids
            self._tokenizer = tokenizer
            self._model = model

    def _ensure_adapter(self, adapter: str) -> str:
        """Load the adapter's current files once; return their name, `<adapter>@<fp>`."""
        directory = self.adapter_dirs[adapter]
        loaded = f"{adapter}@{weights_fingerprint(directory)}"
        if self._lora is not None and loaded in self._lora:
            return loaded
        from assay.models.multi_lora import MultiLora

        if self._lora is None:
            self._lora = MultiLora(self._model)
        self._lora.load(loaded, directory)
        return loaded

    def _grammar_compiler(self) -> Any:
        if self._grammars is None:
            from assay.models.constrained import GrammarCompiler

            vocab = self._model.get_output_embeddings().weight.shape[0]
            self._grammars = GrammarCompiler(self._tokenizer, vocab, sorted(self._eos))
        return self._grammars

    def _item_for(self, request: ChatRequest) -> tuple[GenerationItem, int]:
        adapter = self.adapter_of(request.model)
        if adapter is not None:
            adapter = self._ensure_adapter(adapter)
        grammar = None
        if response_format := decoding_format(request):
            compiler = self._grammar_compiler()
            grammar = compiler.matcher(compiler.compile(response_format))
        return generation_item(request, self._tokenizer, adapter, grammar)

    def _response(
        self, job: _Job, result: GenerationResult, prompt_len: int, finished: float
    ) -> ChatResponse:
        return chat_response(
            result.text,
            result.finish_reason,
            bool(job.request.tools),
            prompt_len,
            len(result.token_ids),
            finished - job.queued_at,
        )


# every backend not yet garbage-collected, for close_local_backends at exit
_open_backends: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


@atexit.register
def close_local_backends(timeout: float = 30.0) -> None:
    """Cancel every backend's batch in progress and stop its scheduler thread (at most
    `timeout` seconds each). Runs at interpreter exit: a daemon thread still inside torch
    when Python finalises is ended with `pthread_exit`, whose unwinding through C++ frames
    aborts the process (`terminate called without an active exception`, exit status 134,
    as after Ctrl-C in a run)."""
    for backend in list(_open_backends):
        backend.close(cancel=True, timeout=timeout)
