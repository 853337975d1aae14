"""The shared local backends: one `LocalBackend` per base model for `local/...` model
strings, and the `LLMClient` route to them (`register_local_backend`)."""

from __future__ import annotations

import threading
from typing import Any

from assay.models.local_backend import LOCAL_PREFIX, LocalBackend
from assay.models.registry import ModelRegistry

# keyed by (registry file, base alias, base weights): a backend answers for the registry it
# read and the weights it loaded, never for a registry or an alias re-pointed since
_backends: dict[tuple[str, str, str], LocalBackend] = {}
_backends_lock = threading.Lock()


def get_local_backend(model: str, **options: Any) -> LocalBackend:
    """The shared backend for a `local/...` model string (its base model), created once.

    `local/smollm2-135m` and `local/smollm2-135m+sql-intern` share one backend (and one
    copy of the weights); the adapter is chosen per request. Options go to `LocalBackend`
    the first time a base model is asked for.

    A backend belongs to the registry file it was made from and to the base weights it
    loaded: when `$ASSAY_MODEL_CACHE` points elsewhere, or the base alias is registered to
    other weights, the next call makes a new backend (the old one finishes its queued jobs
    and stops), so no request is answered by weights the current registry does not name.
    """
    name = model.removeprefix(LOCAL_PREFIX)
    registry = ModelRegistry.load()
    spec = registry.resolve(name)
    base = spec.base_name or spec.name
    key = (str(registry.path), base, str(spec.source))
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            stale = [k for k in _backends if k[1] == base]
            for old in (_backends.pop(k) for k in stale):
                threading.Thread(target=old.close, name="assay-local-close", daemon=True).start()
            backend = _backends[key] = LocalBackend(base, registry=registry, **options)
        return backend


def register_local_backend() -> None:
    """Route `local/...` model strings in `LLMClient` to the shared local backends.

    Cheap to call (no torch import); the model loads on the first batch. The client's
    settings only choose the model: rate limits and retries still apply around it.
    """
    from assay.curate.llm.client import register_backend

    register_backend("local", lambda settings: get_local_backend(settings.model))
