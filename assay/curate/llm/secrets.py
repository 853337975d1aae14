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
