"""The event hook: one structured event per attempt, skip, failover and breaker change.

Hosts subscribe with a callable; logging is one such subscriber
(:func:`log_event`).  Events carry member names and redacted messages only, never
keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Event", "EventHook", "EventKind", "Outcome", "log_event"]

logger = logging.getLogger("lbprovider")


class EventKind(StrEnum):
    """What happened."""

    ATTEMPT = "attempt"  # one call to one member ended (outcome: success/failure/timeout/cancelled)
    SKIP = "skip"  # a member was not tried (outcome: breaker/probe/tpm/bench)
    FAILOVER = "failover"  # the request moved on from a member after its final failure
    BREAKER = "breaker"  # a breaker changed state (outcome: the new state)
    FAILBACK = "failback"  # failover tried member 0 again (outcome: success/failure)
    REQUEST = "request"  # a request ended (outcome: success/failure/cancelled)
    AFFINITY = "affinity"  # a known conversation met its member first, or not (hit/miss)
    HEDGE = "hedge"  # a hedge started, and which attempt served (started/won/lost)


class Outcome(StrEnum):
    """What an event says happened (``Event.outcome``).  A BREAKER event's outcome is the
    breaker's new state (``BreakerState``) and a FAILOVER event's the failure's kind
    (``FailureKind``): both string enums too."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"  # a first-chunk timeout (also a failure)
    CANCELLED = "cancelled"  # the caller went away before the first chunk
    INTERRUPTED = "interrupted"  # the stream broke after its first chunk
    # Why a member was skipped (SKIP).
    BREAKER_OPEN = "breaker open"
    BENCHED = "benched"
    PROBE_IN_FLIGHT = "probe in flight"
    TPM = "tpm"
    HEADROOM = "headroom"
    # AFFINITY and HEDGE.
    HIT = "hit"
    MISS = "miss"
    STARTED = "started"
    WON = "won"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the engine did."""

    kind: EventKind
    profile: str
    member: str | None = None
    outcome: str = ""
    attempt: int | None = None
    status: int | None = None
    latency_ms: float | None = None
    detail: str = ""
    at: float = 0.0  # epoch seconds
    # A failed attempt's kind (FailureKind's value: retryable, immediate, request, final).
    failure: str | None = None
    first_chunk_ms: float | None = None  # a served attempt's time to its first chunk


EventHook = Callable[[Event], None]


def log_event(event: Event) -> None:
    """The default subscriber: failures and breaker changes at INFO, the rest at DEBUG."""
    level = logging.DEBUG
    if event.kind in (
        EventKind.FAILOVER,
        EventKind.BREAKER,
        EventKind.FAILBACK,
    ) or event.outcome in (Outcome.FAILURE, Outcome.TIMEOUT):
        level = logging.INFO
    if logger.isEnabledFor(level):
        parts = [f"[{event.profile}]", event.kind.value]
        if event.member:
            parts.append(event.member)
        if event.outcome:
            parts.append(event.outcome)
        if event.status is not None:
            parts.append(str(event.status))
        if event.detail:
            parts.append(f"- {event.detail}")
        logger.log(level, " ".join(parts))
