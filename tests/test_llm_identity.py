"""The request cache keys on who answers: the endpoint (normalised api_base) and, for local
models, a fingerprint of the weights; a retrained adapter re-registered under its old name
is reloaded and answers anew, while the old weights' answers stay cached for them."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from local_tiny_model import build_lora_adapter, build_tiny_model
from openai_server import FakeOpenAI

from assay.curate.errors import StageError
from assay.curate.pipeline import Pipeline
from assay.operators.generate import Generate

TRANSPORTS = ["litellm", "http"]


def rows(n: int = 3) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], "q": [f"q{i}" for i in range(n)]})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_same_model_on_two_servers_is_asked_on_each(workspace: Path, transport: str) -> None:
    def run(base: str) -> list[str]:
        stage = Generate(model="openai/x", api_base=base, prompt="{{ q }}", transport=transport)
        return (
            Pipeline([stage])
            .run(rows(), workspace=workspace, progress="quiet")
            .to_arrow()["generation"]
            .to_pylist()
        )

    with (
        FakeOpenAI(responder=lambda b: "from A") as a,
        FakeOpenAI(responder=lambda b: "from B") as b,
    ):
        assert run(a.base_url) == ["from A"] * 3
        assert run(b.base_url) == ["from B"] * 3
        assert (a.total_billed, b.total_billed) == (3, 3)
        # the same endpoint spelt differently is the same endpoint: all cached
        assert run(a.base_url + "/") == ["from A"] * 3
        assert run(a.base_url.replace("http://", "HTTP://")) == ["from A"] * 3
        assert (a.total_billed, b.total_billed) == (3, 3)


@pytest.fixture
def model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ASSAY_MODEL_CACHE", str(tmp_path / "model-cache"))
    return tmp_path


def test_a_retrained_adapter_is_reloaded_and_cached_apart(model_cache: Path) -> None:
    from assay.curate.llm.types import ChatRequest
    from assay.models.local_backend import LocalBackend
    from assay.models.registry import register_adapter, register_model
    from assay.models.shared_backends import get_local_backend

    alias = f"tiny-{uuid.uuid4().hex[:8]}"  # backends are per process: keep this one apart
    model_dir = build_tiny_model(model_cache / "model")
    register_model(alias, model_dir)
    first = build_lora_adapter(model_dir, model_cache / "lora-v1", seed=1)
    second = build_lora_adapter(model_dir, model_cache / "lora-v2", seed=2)
    trained = model_cache / "lora-out"  # where the "trainer" writes, both times
    shutil.copytree(first, trained)
    name = register_adapter("sql", trained, base=alias)
    workspace = model_cache / "ws"
    prompts = pa.table(
        {"id": ["a", "b", "c"], "q": ["SELECT 1", "red green blue", "the weather in Paris"]}
    )

    def run() -> list[str]:
        stage = Generate(model=f"local/{name}", prompt="{{ q }}", temperature=0, max_tokens=8)
        result = Pipeline([stage]).run(prompts, workspace=workspace, progress="quiet")
        return result.to_arrow()["generation"].to_pylist()

    v1 = run()
    backend = get_local_backend(f"local/{alias}")
    batches = backend.batches_run
    assert run() == v1 and backend.batches_run == batches  # unchanged weights: cached

    # retrain: new weights in the same folder, registered again under the same name
    shutil.rmtree(trained)
    shutil.copytree(second, trained)
    register_adapter("sql", trained, base=alias)
    v2 = run()
    assert backend.batches_run > batches  # asked the model again
    assert v2 != v1
    # ... and the answers are the new weights': a fresh backend loading them agrees
    reference = LocalBackend(alias, adapters={"v2": second}, device="cpu")
    requests = [
        ChatRequest(
            model=f"local/{alias}+v2",
            messages=({"role": "user", "content": q},),
            params={"temperature": 0, "max_tokens": 8},
        )
        for q in prompts["q"].to_pylist()
    ]
    assert [r.text for r in reference.complete_many(requests)] == v2
    reference.close()

    # the first weights again (registered from a copy): their stored answers are served
    batches = backend.batches_run
    register_adapter("sql", first, base=alias)
    assert run() == v1 and backend.batches_run == batches
    con = duckdb.connect(str(workspace / "assay.duckdb"), read_only=True)
    (stored,) = con.execute("select count(*) from llm_cache").fetchone()
    con.close()
    assert stored == 6  # three answers per set of weights

    # an adapter nobody registered stops the run with an error naming it (as before)
    unknown = Generate(model=f"local/{alias}+nope", prompt="{{ q }}", max_tokens=4)
    with pytest.raises(StageError, match=r"no adapter .*\+nope"):
        Pipeline([unknown]).run(prompts, workspace=workspace, progress="quiet")


def test_a_backend_answers_for_the_registry_and_weights_it_was_made_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backends are shared per process, but an alias registered again in another model
    cache (or re-pointed at other weights) gets a backend of its own: the old one must not
    answer for weights it never loaded, nor miss adapters only the new registry names."""
    from assay.curate.llm.types import ChatRequest
    from assay.models.local_backend import LocalBackend
    from assay.models.registry import register_adapter, register_model
    from assay.models.shared_backends import get_local_backend

    alias = f"tiny-{uuid.uuid4().hex[:8]}"

    def ask(model: str) -> list[str]:
        backend = get_local_backend(model)
        request = ChatRequest(
            model=model,
            messages=({"role": "user", "content": "SELECT 1"},),
            params={"temperature": 0, "max_tokens": 8},
        )
        return [r.text for r in backend.complete_many([request])]

    monkeypatch.setenv("ASSAY_MODEL_CACHE", str(tmp_path / "cache-a"))
    register_model(alias, build_tiny_model(tmp_path / "model-a", seed=1))
    first = get_local_backend(f"local/{alias}")
    answer_a = ask(f"local/{alias}")

    # a second model cache: the same alias, other weights, and an adapter only it knows
    monkeypatch.setenv("ASSAY_MODEL_CACHE", str(tmp_path / "cache-b"))
    model_b = build_tiny_model(tmp_path / "model-b", seed=2)
    register_model(alias, model_b)
    lora = build_lora_adapter(model_b, tmp_path / "lora-b", seed=3)
    register_adapter("ctx", lora, base=alias)
    second = get_local_backend(f"local/{alias}+ctx")
    assert second is not first
    assert second.spec.source == model_b.resolve()
    reference = LocalBackend(alias, adapters={"ref": lora}, device="cpu")
    request = ChatRequest(
        model=f"local/{alias}+ref",
        messages=({"role": "user", "content": "SELECT 1"},),
        params={"temperature": 0, "max_tokens": 8},
    )
    assert ask(f"local/{alias}+ctx") == [r.text for r in reference.complete_many([request])]
    reference.close()
    assert get_local_backend(f"local/{alias}") is second  # shared again from here on
    assert ask(f"local/{alias}") != answer_a  # the seed-2 weights answer, not seed 1's
