"""Error classification, in one place (SPEC §3.2): what a failed attempt means.

Transports raise :class:`~lbprovider.errors.TransportError`, which says what happened
in neutral terms (status, ``Retry-After``, provider error code, network, timeout);
:func:`classify` decides what that means for routing, as a :class:`BackendError` of one
:class:`FailureKind`.  Nothing here knows a client library's exception classes.  Caller
cancellation is not classified: it propagates as ``asyncio.CancelledError`` and is never
a backend failure.
"""

from __future__ import annotations

import socket

from lbprovider.errors import BackendError, FailureKind, TransportError
from lbprovider.redaction import scrub
from lbprovider.settings import LBSettings

__all__ = [
    "CONTENT_POLICY_CODES",
    "IMMEDIATE_STATUSES",
    "REQUEST_CODES",
    "REQUEST_STATUSES",
    "classify",
]

IMMEDIATE_STATUSES = frozenset({401, 402, 403})
REQUEST_STATUSES = frozenset({400, 404, 413, 422})
# Provider error codes that say the request itself cannot be served as sent here
# (another member may have a larger window).
REQUEST_CODES = frozenset({"context_length_exceeded"})
# A refusal of the content itself: the caller's answer, not something to route around
# (SPEC §3.2), unless `failover_on_content_policy`. Azure says "content_filter".
CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "content_filter"})


def _unexpected(exc: BaseException, member: str, secrets: tuple[str, ...]) -> TransportError:
    """An exception that is not a transport's (a bug, a custom transport): no status,
    so it is retried like any error without one."""
    return TransportError(
        scrub(str(exc) or type(exc).__name__, secrets),
        member=member,
        network=isinstance(exc, ConnectionError | socket.gaierror),
        timeout=isinstance(exc, TimeoutError),
    )


def classify(
    exc: BaseException,
    *,
    member: str,
    settings: LBSettings,
    secrets: tuple[str, ...] = (),
) -> BackendError:
    """Turn a failed attempt into a classified :class:`BackendError`."""
    if isinstance(exc, BackendError):
        return exc
    err = exc if isinstance(exc, TransportError) else _unexpected(exc, member, secrets)
    status = err.status
    if err.code in CONTENT_POLICY_CODES:
        kind = FailureKind.REQUEST if settings.failover_on_content_policy else FailureKind.FINAL
    elif err.code in REQUEST_CODES or status in REQUEST_STATUSES:
        kind = FailureKind.REQUEST
    elif status in IMMEDIATE_STATUSES:
        kind = FailureKind.IMMEDIATE
    elif err.network:
        kind = (
            FailureKind.RETRYABLE
            if settings.failover_on_network_errors
            else (FailureKind.IMMEDIATE)
        )
    elif status is None or status == 408 or status in settings.failover_status_codes:
        kind = FailureKind.RETRYABLE
    else:
        kind = FailureKind.IMMEDIATE
    fields = err.failure_fields()
    fields["member"] = member
    return BackendError(scrub(err.message, secrets), kind=kind, **fields)
