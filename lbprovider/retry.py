"""Retries on the same member (SPEC §3.2.2), with tenacity.

One :class:`tenacity.AsyncRetrying` per member per request (never shared between
tasks).  It retries only classified retryable errors, waits
``failover_retry_delay_ms`` or the backend's ``Retry-After`` (whichever is
longer), and stops after ``failover_retry_count`` attempts.  A ``Retry-After``
longer than :data:`MAX_SAME_MEMBER_WAIT_S` is not waited out on the same member:
the request moves on at once (and an open breaker stays open that long).
Retries cover only the way to the first chunk; the caller decides that by doing
nothing but that inside an attempt.
"""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from lbprovider.clock import Sleep
from lbprovider.errors import BackendError, FailureKind
from lbprovider.settings import LBSettings

__all__ = ["MAX_SAME_MEMBER_WAIT_S", "member_retrying"]

MAX_SAME_MEMBER_WAIT_S = 30.0


def _retryable(exc: BaseException) -> bool:
    return (
        isinstance(exc, BackendError)
        and exc.kind is FailureKind.RETRYABLE
        and (exc.retry_after is None or exc.retry_after <= MAX_SAME_MEMBER_WAIT_S)
    )


def member_retrying(settings: LBSettings, sleep: Sleep) -> AsyncRetrying:
    """A fresh retry controller for one member within one request."""
    delay_s = settings.failover_retry_delay_ms / 1000

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        return max(delay_s, float(retry_after))

    return AsyncRetrying(
        stop=stop_after_attempt(settings.failover_retry_count),
        wait=wait,
        retry=retry_if_exception(_retryable),
        sleep=sleep,
        reraise=True,
    )
