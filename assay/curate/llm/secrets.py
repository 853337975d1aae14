"""Which API keys a request may carry, and scrubbing every key the process can see from text.

A key reaches a server only when the stage names it (`api_key_env` / `api_key`), or when the
model string alone picks the provider's own endpoint (no `api_base`), where the provider's
usual environment variable (`OPENAI_API_KEY`...) is the intended key. A custom `api_base`
with no named key gets a placeholder, so no client library falls back to a key from the
environment and sends it to whatever server `api_base` names.

Error messages sometimes quote keys (a provider's "invalid key sk-..."; an SDK echoing its
config), and not only the stage's: `scrub` replaces the stage's key and every value of an
environment variable that looks like a credential.
"""

from __future__ import annotations

import os
import re

from assay.curate.errors import AssayError

# what OpenAI-compatible servers that take no key are sent instead (the OpenAI SDK refuses
# to send without one); never a real credential
PLACEHOLDER_KEY = "EMPTY"

# environment variable names whose values are treated as secrets
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE)
# shorter values are too likely to occur in ordinary text ("1", "true", a port)
_MIN_LEN = 8
MASK = "***"


def key_for_request(named: str | None, api_base: str | None) -> str | None:
    """The key a backend should pass: the stage's, a placeholder for a custom server, or
    None (the provider's own endpoint: the client library reads its usual variable)."""
    if named:
        return named
    return PLACEHOLDER_KEY if api_base else None


class MissingCredentialsError(AssayError):
    """A model with no API key to send and no `api_base` to send it to: every request would
    fail the same way, so the run stops at the first one (no retries)."""


# how the OpenAI SDK (which litellm uses for openai/ models) says it has no key; litellm
# wraps it in a 500, which would otherwise be retried
_MISSING_KEY_TEXT = ("Missing credentials", "api_key client option must be set")


def is_missing_credentials(exc: BaseException) -> bool:
    """Whether a client library refused to send for want of a key (before any request)."""
    text = str(exc)
    return any(marker in text for marker in _MISSING_KEY_TEXT)


def missing_credentials(
    model: str, api_base: str | None, api_key_env: str | None
) -> MissingCredentialsError:
    """The error naming the model and the setting it lacks."""
    provider = model.split("/", 1)[0] if "/" in model else "the provider"
    usual = "OPENAI_API_KEY" if provider == "openai" else f"{provider}'s key variable"
    if api_key_env:
        key = f"api_key_env names {api_key_env!r}, which is not set in the environment"
    else:
        key = f"no API key (no api_key or api_key_env, and {usual} is not set)"
    where = "" if api_base else " and no api_base"
    return MissingCredentialsError(
        f"model {model!r} has {key}{where}: set {api_key_env or usual} (or name another "
        f"variable with api_key_env) to call {provider}, or set api_base to the URL of an "
        "OpenAI-compatible server"
    )


def visible_secrets(extra: tuple[str | None, ...] = ()) -> list[str]:
    """Every credential-looking environment value plus `extra`, longest first."""
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_LEN}
    found.update(s for s in extra if s and len(s) >= 4)
    return sorted(found, key=len, reverse=True)


def scrub(text: str, extra: tuple[str | None, ...] = ()) -> str:
    """`text` with every visible secret (and `extra`) replaced by `***`."""
    for secret in visible_secrets(extra):
        if secret in text:
            text = text.replace(secret, MASK)
    return text
