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

__all__ = ["Event", "EventHook", "EventKind", "log_event"]

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
    ) or event.outcome in (
        "failure",
        "timeout",
    ):
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
