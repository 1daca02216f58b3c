"""``GET /metrics`` (SPEC §11.4): Prometheus text, with ``prometheus_client``.

The names and labels below are a contract.  Per process: requests by endpoint and
outcome, attempts by member and outcome (from the engine's events, through
:meth:`GatewayMetrics.on_event`), failovers, time to first chunk, tokens, requests in
flight, and the routing counters of SPEC §3.5–§4.3 (hedges, affinity, headroom skips).
From the state store, so for the whole fleet: each member's breaker state, read when the
metrics are scraped.  Each gateway has its own registry, so two in one process (tests)
never share a counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from lbprovider import breaker as brk
from lbprovider.events import Event, EventKind, Outcome
from lbprovider.ledger import Ledger, breaker_key
from lbprovider.transport import Usage

__all__ = ["GatewayMetrics", "RequestOutcome"]

# An attempt's outcome label, by the engine event that ended it.
_ATTEMPT_OUTCOMES: dict[str, str] = {
    Outcome.SUCCESS: "ok",
    Outcome.TIMEOUT: "timeout",
    Outcome.INTERRUPTED: "interrupted",
}
_BREAKER_VALUE = {
    brk.BreakerState.CLOSED: 0,
    brk.BreakerState.HALF_OPEN: 1,
    brk.BreakerState.OPEN: 2,
}
_TTFC_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)


class RequestOutcome(StrEnum):
    """``lbprovider_requests_total``'s outcome label."""

    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"


class GatewayMetrics:
    """The gateway's Prometheus metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "lbprovider_requests", "Requests answered", ["lb", "endpoint", "outcome"], registry=r
        )
        self.attempts = Counter(
            "lbprovider_attempts", "Attempts on members", ["lb", "member", "outcome"], registry=r
        )
        self.failovers = Counter(
            "lbprovider_failovers",
            "Moves to the next member after a final failure",
            ["lb"],
            registry=r,
        )
        self.ttfc = Histogram(
            "lbprovider_time_to_first_chunk_seconds",
            "Time from the request reaching a member to its first content chunk",
            ["lb", "member"],
            buckets=_TTFC_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "lbprovider_tokens", "Tokens of served answers", ["member", "kind"], registry=r
        )
        self.inflight = Gauge(
            "lbprovider_inflight_requests", "Requests being answered", ["lb"], registry=r
        )
        self.hedges = Counter(
            "lbprovider_hedges", "Hedged attempts, by result", ["lb", "result"], registry=r
        )
        self.affinity = Counter(
            "lbprovider_affinity",
            "Conversation affinity, hit or miss",
            ["lb", "result"],
            registry=r,
        )
        self.headroom_skips = Counter(
            "lbprovider_headroom_skips",
            "Members skipped for no rate-limit headroom",
            ["member"],
            registry=r,
        )
        self.breaker = Gauge(
            "lbprovider_breaker_state",
            "Breaker state from the state store: 0 closed, 1 half-open, 2 open",
            ["member"],
            registry=r,
        )

    def on_event(self, event: Event) -> None:
        """The engine's event hook: attempts, failovers, first chunks."""
        if event.kind is EventKind.ATTEMPT:
            if event.outcome == Outcome.CANCELLED:
                return  # a caller that left is not an attempt's outcome (SPEC §6)
            # A content-policy refusal (FailureKind.FINAL) is the request's fault too.
            failure = "request" if event.failure == "final" else event.failure
            outcome = _ATTEMPT_OUTCOMES.get(event.outcome) or failure or "retryable"
            self.attempts.labels(event.profile, event.member or "", outcome).inc()
            if event.first_chunk_ms is not None and event.outcome == Outcome.SUCCESS:
                self.ttfc.labels(event.profile, event.member or "").observe(
                    event.first_chunk_ms / 1000
                )
        elif event.kind is EventKind.FAILOVER:
            self.failovers.labels(event.profile).inc()
        elif event.kind is EventKind.SKIP and event.outcome == Outcome.HEADROOM:
            self.headroom_skips.labels(event.member or "").inc()
        elif event.kind is EventKind.AFFINITY:
            self.affinity.labels(event.profile, event.outcome).inc()
        elif event.kind is EventKind.HEDGE:
            self.hedges.labels(event.profile, event.outcome).inc()

    def served(self, member: str, usage: Usage | None) -> None:
        """Count the tokens of one served answer."""
        if usage is None:
            return
        for kind, n in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
        ):
            if n:
                self.tokens.labels(member, kind).inc(n)

    async def render(self, ledger: Ledger, members: Iterable[str], now: float) -> bytes:
        """The Prometheus text, with every member's breaker state read from the store."""
        keys = [breaker_key(m) for m in sorted(set(members))]
        records = await ledger.aread(keys)
        for key in keys:
            state = records[key].effective_state(now)
            self.breaker.labels(key.name).set(_BREAKER_VALUE[state])
        return generate_latest(self.registry)

    def render_local(self) -> bytes:
        """The Prometheus text of this process only (no load balancer to read state for)."""
        return generate_latest(self.registry)
