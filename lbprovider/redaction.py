"""Keeping secrets out of everything we print, log or store (SPEC §2.1, §8).

:func:`redact` shows a secret as at most its last 4 characters; :func:`scrub` removes
known secrets and anything shaped like a bearer token or an ``sk-`` key from a free
text (a backend's error message, an exception's text) and bounds it to one line.
"""

from __future__ import annotations

import re

from pydantic import SecretStr

__all__ = ["redact", "scrub"]

_MAX_MESSAGE = 300
_TOKEN = re.compile(r"(?i)(bearer\s+|sk-)[A-Za-z0-9_\-]{6,}")
# litellm prefixes its class names several times ("litellm.X: X: OpenAIException - ...").
_CLASS_PREFIXES = re.compile(r"^(?:litellm\.\w+:\s*|\w+Error:\s*)+")


def redact(secret: str | SecretStr | None) -> str:
    """Show a key as at most its last 4 characters (nothing of a short key)."""
    if secret is None:
        return ""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if len(value) < 12:
        return "****"
    return "****" + value[-4:]


def scrub(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A one-line, bounded message with any known secret and bearer token removed."""
    for s in secrets:
        if s:
            message = message.replace(s, "****")
    message = _TOKEN.sub(r"\1****", message)
    message = " ".join(message.split())
    message = _CLASS_PREFIXES.sub("", message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return message or "error with no message"
