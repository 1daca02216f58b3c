"""Keeping secrets out of everything we print, log or store (SPEC §2.1, §8).

One place decides what a secret is and how it is shown:

- :func:`redact` shows any secret value as at most its last 4 characters (nothing of a
  short one, and nothing of a value that is not even a string);
- :func:`is_secret_name` says whether a field or header name holds one (``auth-key``,
  ``Authorization``, ``api-key``, ``x-api-key``, anything with ``key``, ``token``,
  ``secret``, ``password``, ``credential``, but not the settings that merely mention
  them: ``max_tokens``, ``auth-key-env``, ...);
- :func:`redact_url` removes credentials from a URL (user info, secret query values);
- :func:`redact_profile` applies all of it to a raw profile (``profiles show``);
- :func:`scrub` removes known secrets, bearer tokens, ``sk-`` keys and URL credentials
  from free text (a backend's error message), bounded to one line.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "is_path_like",
    "is_secret_name",
    "redact",
    "redact_profile",
    "redact_url",
    "scrub",
]

_MAX_MESSAGE = 300
_TOKEN = re.compile(r"(?i)(bearer\s+|sk-)[A-Za-z0-9_\-]{6,}")
_URL_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@")
_URL_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:[a-z0-9_-]*(?:key|token|secret|password|signature|sig)[a-z0-9_-]*)=)[^&\s#]+"
)
# litellm prefixes its class names several times ("litellm.X: X: OpenAIException - ...").
_CLASS_PREFIXES = re.compile(r"^(?:litellm\.\w+:\s*|\w+Error:\s*)+")
_SECRET_NAME = re.compile(r"(?i)authorization|key|token|secret|password|passwd|credential|cookie")
# Names that mention a secret without holding one.
_NOT_SECRET = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "max-output-tokens",
        "max_output_tokens",
        "max_new_tokens",
        "auth-key-env",
        "auth-keyfile",
        "tokenizer",
    }
)


def redact(secret: Any) -> str:
    """Show a secret as at most its last 4 characters (nothing of a short or odd one)."""
    if secret is None:
        return ""
    # pydantic's SecretStr, by its method: importing pydantic here would cost every command.
    value = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
    if not isinstance(value, str) or len(value) < 12:
        return "****"
    return "****" + value[-4:]


def is_secret_name(name: str) -> bool:
    """Whether a field or header called ``name`` holds a secret."""
    return name.lower() not in _NOT_SECRET and bool(_SECRET_NAME.search(name))


def is_path_like(value: str) -> bool:
    """A key-file setting that looks like a path (else it may be a pasted key)."""
    return "/" in value or value.startswith("~") or "\\" in value


def redact_url(url: str) -> str:
    """``url`` without user info and with secret-looking query values redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "****@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, redact(v) if is_secret_name(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_profile(data: Any) -> Any:
    """A copy of a raw profile with every secret redacted, whatever its type.

    ``auth-keyfile`` is shown only when it looks like a path; ``base-url`` loses its
    credentials; any field whose name holds a secret (``auth-key``, headers in
    ``modelParams.extra_headers`` such as ``Authorization``) is redacted as a whole.
    """
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key)
            if name == "auth-keyfile":
                keep = isinstance(value, str) and is_path_like(value)
                out[key] = value if keep else redact(value)
            elif name == "base-url" and isinstance(value, str):
                out[key] = redact_url(value)
            elif is_secret_name(name):
                out[key] = redact(value)
            else:
                out[key] = redact_profile(value)
        return out
    if isinstance(data, list):
        return [redact_profile(v) for v in data]
    return data


def scrub(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A one-line, bounded message with known secrets, bearer tokens, ``sk-`` keys and
    URL credentials removed."""
    for s in secrets:
        if s:
            message = message.replace(s, "****")
    message = _TOKEN.sub(r"\1****", message)
    message = _URL_USERINFO.sub(r"\1****@", message)
    message = _URL_SECRET_QUERY.sub(r"\1****", message)
    message = " ".join(message.split())
    message = _CLASS_PREFIXES.sub("", message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return message or "error with no message"
