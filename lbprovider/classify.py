"""Error classification, in one place (SPEC §3.2): what a failed attempt means.

Every exception from a backend call becomes a :class:`BackendError` of one
:class:`FailureKind`.  Caller cancellation is not classified: it propagates as
``asyncio.CancelledError`` and is never a backend failure.

litellm facts this relies on (see docs/design.md): every error carries
``status_code``; a refused connection is a 500 "Connection error." whose cause
chain holds the connect error; ``Retry-After`` is in ``litellm_response_headers``.
"""

from __future__ import annotations

import email.utils
import re
import socket
from collections.abc import Mapping
from typing import Any

from lbprovider.errors import BackendError, FailureKind
from lbprovider.settings import LBSettings

__all__ = ["classify", "parse_retry_after", "scrub"]

IMMEDIATE_STATUSES = frozenset({401, 402, 403})
REQUEST_STATUSES = frozenset({400, 404, 413, 422})
_REQUEST_CLASSES = frozenset({"ContextWindowExceededError", "ContentPolicyViolationError"})
_NETWORK_CLASS_NAMES = frozenset(
    {
        # httpx / httpcore
        "ConnectError",
        "ConnectTimeout",
        "ReadError",
        "ReadTimeout",
        "WriteError",
        "RemoteProtocolError",
        "NetworkError",
        "PoolTimeout",
        # aiohttp
        "ClientConnectorError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "ClientConnectionResetError",
        # openai / litellm
        "APIConnectionError",
        "MidStreamFallbackError",
    }
)
_NETWORK_MESSAGES = re.compile(
    r"connection error|connection refused|connection reset|name or service not known|"
    r"temporary failure in name resolution|response payload is not completed|"
    r"server disconnected|timeout on reading data",
    re.I,
)
_MAX_MESSAGE = 300


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_network_error(exc: BaseException) -> bool:
    """Connection refused/reset, DNS, read errors: anywhere in the cause chain."""
    for e in _chain(exc):
        if isinstance(e, ConnectionError | socket.gaierror | TimeoutError):
            return True
        if type(e).__name__ in _NETWORK_CLASS_NAMES:
            return True
        if _NETWORK_MESSAGES.search(str(e)):
            return True
    return False


def parse_retry_after(headers: Mapping[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms``."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in headers.items()}
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except (TypeError, ValueError):
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if now is None:
        return None
    return max(0.0, when.timestamp() - now)


def _headers(exc: BaseException) -> Mapping[str, Any] | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers:
        return dict(headers)
    response = getattr(exc, "response", None)
    raw = getattr(response, "headers", None)
    return dict(raw) if raw else None


def scrub(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A one-line, bounded message with any known secret and bearer token removed."""
    for s in secrets:
        if s:
            message = message.replace(s, "****")
    message = re.sub(r"(?i)(bearer\s+|sk-)[A-Za-z0-9_\-]{6,}", r"\1****", message)
    message = " ".join(message.split())
    # litellm prefixes its class names several times ("litellm.X: X: OpenAIException - ...").
    message = re.sub(r"^(?:litellm\.\w+:\s*|\w+Error:\s*)+", "", message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return message or "error with no message"


def classify(
    exc: BaseException,
    *,
    member: str,
    settings: LBSettings,
    secrets: tuple[str, ...] = (),
    now: float | None = None,
) -> BackendError:
    """Turn any backend exception into a classified :class:`BackendError`."""
    if isinstance(exc, BackendError):
        return exc
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    retry_after = parse_retry_after(_headers(exc), now)
    network = is_network_error(exc)
    names = {type(e).__name__ for e in _chain(exc)}
    if names & _REQUEST_CLASSES or status in REQUEST_STATUSES:
        kind = FailureKind.REQUEST
    elif status in IMMEDIATE_STATUSES:
        kind = FailureKind.IMMEDIATE
    elif network:
        kind = (
            FailureKind.RETRYABLE
            if settings.failover_on_network_errors
            else (FailureKind.IMMEDIATE)
        )
    elif status is None or status == 408 or status in settings.failover_status_codes:
        kind = FailureKind.RETRYABLE
    else:
        kind = FailureKind.IMMEDIATE
    return BackendError(
        scrub(str(exc) or type(exc).__name__, secrets),
        member=member,
        status=None if network and status == 500 else status,
        kind=kind,
        retry_after=retry_after,
        network=network,
    )
