"""Provider keys from the environment reach a server only when the stage names them, and no
key the process can see appears in an error message."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from openai_server import FakeOpenAI

from assay.curate.pipeline import Pipeline
from assay.operators.generate import Generate

PLANTED = "sk-planted-USER-KEY-0000000000"
OTHER = "sk-ant-planted-OTHER-1111111111"
NAMED = "named-server-key-2222222222"
FAST = {"retry_initial_s": 0.01, "retry_max_s": 0.02, "retry_jitter_s": 0.0, "max_attempts": 2}
TRANSPORTS = ["litellm", "http"]


def rows(n: int = 2) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], "q": [f"q{i}" for i in range(n)]})


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    monkeypatch.setenv("ANTHROPIC_API_KEY", OTHER)
    monkeypatch.setenv("MY_SERVER_KEY", NAMED)


def headers_text(server: FakeOpenAI) -> str:
    return "\n".join(f"{k}: {v}" for h in server.raw_headers for k, v in h.items())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unnamed_environment_key_never_reaches_a_custom_server(
    planted: None, workspace: Path, transport: str
) -> None:
    with FakeOpenAI() as server:
        stage = Generate(
            model="openai/m", api_base=server.base_url, prompt="{{ q }}", transport=transport
        )
        result = Pipeline([stage]).run(rows(), workspace=workspace, progress="quiet")
    assert result.to_arrow()["generation"].to_pylist() == ["echo: q0", "echo: q1"]
    assert len(server.raw_headers) == 2
    sent = headers_text(server)
    assert PLANTED not in sent and OTHER not in sent and NAMED not in sent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_key_the_stage_names_is_sent(planted: None, workspace: Path, transport: str) -> None:
    with FakeOpenAI() as server:
        stage = Generate(
            model="openai/m",
            api_base=server.base_url,
            api_key_env="MY_SERVER_KEY",
            prompt="{{ q }}",
            transport=transport,
        )
        Pipeline([stage]).run(rows(1), workspace=workspace, progress="quiet")
    (headers,) = server.raw_headers
    assert headers["Authorization"] == f"Bearer {NAMED}"
    assert PLANTED not in headers_text(server)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_visible_key_is_scrubbed_from_errors(
    planted: None, workspace: Path, transport: str
) -> None:
    # the server quotes the stage's key and echoes two keys of the environment it never got
    detail = f"known keys: {PLANTED} and {OTHER}"
    with FakeOpenAI(
        script=lambda key, attempt: "401", quote_key_in_errors=True, error_detail=detail
    ) as server:
        stage = Generate(
            model="openai/m",
            api_base=server.base_url,
            api_key_env="MY_SERVER_KEY",
            prompt="{{ q }}",
            transport=transport,
            **FAST,
        )
        result = Pipeline([stage]).run(rows(1), workspace=workspace, progress="quiet")
    (reason,) = result.rejects()["_reason"].to_pylist()
    assert "injected 401" in reason and "known keys" in reason
    for key in (PLANTED, OTHER, NAMED):
        assert key not in reason
    blob = (workspace / "assay.duckdb").read_bytes()
    for key in (PLANTED, OTHER, NAMED):
        assert key.encode() not in blob


@pytest.fixture
def no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "MY_UNSET_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_openai_model_without_key_or_api_base_is_a_configuration_error(
    no_openai_env: None, transport: str
) -> None:
    import asyncio

    from assay.curate.llm.client import LLMClient, LLMSettings
    from assay.curate.llm.secrets import MissingCredentialsError
    from assay.curate.llm.types import ChatRequest

    # litellm: the OpenAI SDK refuses to send and litellm calls that a 500; the direct
    # transport refuses before sending. Either way one try at most, then the run stops.
    client = LLMClient(LLMSettings(model="openai/gpt-4o-mini", transport=transport))
    request = ChatRequest(model="openai/gpt-4o-mini", messages=({"role": "user", "content": "hi"},))
    with pytest.raises(MissingCredentialsError) as caught:
        asyncio.run(client.complete(request))
    message = str(caught.value)
    assert "'openai/gpt-4o-mini'" in message
    assert "OPENAI_API_KEY is not set" in message and "no api_base" in message
    assert client.sent == (1 if transport == "litellm" else 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_unset_api_key_env_is_named_and_the_run_stops(
    no_openai_env: None, workspace: Path, transport: str
) -> None:
    from assay.curate.llm.secrets import MissingCredentialsError

    stage = Generate(
        model="openai/gpt-4o-mini",
        api_key_env="MY_UNSET_KEY",
        prompt="{{ q }}",
        transport=transport,
        max_attempts=6,
    )
    with pytest.raises(MissingCredentialsError, match="api_key_env names 'MY_UNSET_KEY'"):
        Pipeline([stage]).run(rows(), workspace=workspace, progress="quiet")
