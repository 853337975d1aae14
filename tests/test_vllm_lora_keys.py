"""The vLLM backend's LoRA requests follow the adapter's files, not its name (no GPU or vllm
needed: the keying runs before any vllm import)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from local_tiny_model import build_lora_adapter, build_tiny_model

from assay.models.registry import ADAPTER_SEPARATOR, ModelRegistry
from assay.models.vllm_backend import VllmBackend, lora_key


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _backend(root: Path, model_dir: Path, adapter_dir: Path) -> tuple[VllmBackend, ModelRegistry]:
    registry = ModelRegistry(root / "registry.json")
    registry.register_model("tiny", model_dir)
    registry.register_adapter("a", adapter_dir, "tiny")
    return VllmBackend("tiny", registry=registry), registry


def test_a_retrained_adapter_under_its_old_name_gets_a_new_lora_id(
    tmp_path: Path, model_dir: Path
) -> None:
    adapter_dir = build_lora_adapter(model_dir, tmp_path / "lora-a", seed=1)
    backend, registry = _backend(tmp_path, model_dir, adapter_dir)
    model = f"local/tiny{ADAPTER_SEPARATOR}a"
    adapter = backend.adapter_of(model)
    assert adapter == "a"
    first = backend.lora_request_args(adapter)
    assert backend.lora_request_args(adapter) == first  # unchanged files: the same request
    assert first[2] == str(adapter_dir.resolve())
    weights_before = backend.weights_id(model)

    build_lora_adapter(model_dir, adapter_dir, seed=2)  # retrained in place
    registry.register_adapter("a", adapter_dir, "tiny")  # and registered again, same name
    second = backend.lora_request_args(backend.adapter_of(model))
    assert second[1] != first[1] and second[0] != first[0]
    assert second[2] == first[2]
    # the LoRA request changes exactly when the request cache's identity does
    assert backend.weights_id(model) != weights_before
    assert backend.weights_id(model).endswith(lora_key(adapter_dir).rsplit("@", 1)[1])


def test_lora_key_is_the_resolved_path_plus_the_weights_fingerprint(
    tmp_path: Path, model_dir: Path
) -> None:
    adapter_dir = build_lora_adapter(model_dir, tmp_path / "lora-a", seed=1)
    copy = Path(shutil.copytree(adapter_dir, tmp_path / "copy"))
    key, key_of_copy = lora_key(adapter_dir), lora_key(copy)
    assert key.startswith(f"{adapter_dir.resolve()}@")
    assert lora_key(tmp_path / "x" / ".." / "lora-a") == key  # spellings of one path agree
    # same weights elsewhere: same fingerprint, another key (another path to load from)
    assert key_of_copy.rsplit("@", 1)[1] == key.rsplit("@", 1)[1] and key_of_copy != key
    (copy / "adapter_config.json").write_text('{"changed": true}\n')
    assert lora_key(copy).rsplit("@", 1)[1] != key.rsplit("@", 1)[1]
