"""Metrics and the stats report (SPEC §6).

Per (load balancer, member) a :class:`MemberMetrics` record in the state store
counts attempts as they end: ``requests = successes + failures`` once nothing is
in flight.  An attempt the caller cancelled before its first chunk is neither (it
is counted under ``cancelled``, outside ``requests``); one cancelled after its first
chunk is a success, since the backend did serve.  :func:`build_stats` assembles the
documented JSON shape from the stored records without touching litellm.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lbprovider import headroom
from lbprovider.breaker import BreakerRecord
from lbprovider.events import Outcome  # how one attempt ended (the events' own words)
from lbprovider.headroom import RateLimit
from lbprovider.policies import LBRecord
from lbprovider.window import Buckets, current_tpm

__all__ = [
    "PROFILE_V3_COUNTERS",
    "MemberMetrics",
    "Outcome",
    "build_stats",
    "record_attempt",
    "record_skip",
]

# SPEC §6 [v3]: per load balancer, beside `failbacks`.
PROFILE_V3_COUNTERS = ("affinityHits", "affinityMisses", "hedges", "hedgeWins", "panicProbes")
_SAMPLES = 200  # first-chunk latencies kept per member, for percentiles
RECENT_BUCKET_S = 10  # the recent (requests, failures) counts are kept per 10 seconds...
RECENT_BUCKETS = 7  # ...for 70 s: every bucket that overlaps the last 60 s


@dataclass(frozen=True, slots=True)
class MemberMetrics:
    """Counters for one member under one load balancer."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    cancelled: int = 0
    skips: int = 0
    malformed: int = 0  # SSE events skipped because they could not be read
    interruptions: int = 0  # streams that broke after their first chunk (SPEC §3.4)
    continuations: int = 0  # interrupted answers this member continued
    tokens: int = 0
    cache_read_tokens: int = 0  # prompt tokens the provider read from its cache
    cache_write_tokens: int = 0  # prompt tokens written to it
    # [v3] counted by later features (rate-limit headroom, hedging): 0 until then.
    headroom_skips: int = 0
    hedges_lost: int = 0
    total_latency_ms: float = 0.0
    first_chunk_ms: tuple[float, ...] = field(default=())
    last_error: str | None = None
    last_error_at: float | None = None
    # {floor(epoch / 10 s): (requests, failures)}, the last 70 s (``lbprovider top``)
    recent: Mapping[int, tuple[int, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state store."""
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "cancelled": self.cancelled,
            "skips": self.skips,
            "malformedChunks": self.malformed,
            "interruptions": self.interruptions,
            "continuations": self.continuations,
            "tokens": self.tokens,
            "cacheReadTokens": self.cache_read_tokens,
            "cacheWriteTokens": self.cache_write_tokens,
            "headroomSkips": self.headroom_skips,
            "hedgesLost": self.hedges_lost,
            "totalLatencyMs": self.total_latency_ms,
            "firstChunkMs": list(self.first_chunk_ms),
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "recent10s": [[k, r, f] for k, (r, f) in self.recent.items()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> MemberMetrics:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return cls()
        return cls(
            requests=int(d.get("requests", 0)),
            successes=int(d.get("successes", 0)),
            failures=int(d.get("failures", 0)),
            timeouts=int(d.get("timeouts", 0)),
            cancelled=int(d.get("cancelled", 0)),
            skips=int(d.get("skips", 0)),
            malformed=int(d.get("malformedChunks", 0)),
            interruptions=int(d.get("interruptions", 0)),
            continuations=int(d.get("continuations", 0)),
            tokens=int(d.get("tokens", 0)),
            cache_read_tokens=int(d.get("cacheReadTokens", 0)),
            cache_write_tokens=int(d.get("cacheWriteTokens", 0)),
            headroom_skips=int(d.get("headroomSkips", 0)),
            hedges_lost=int(d.get("hedgesLost", 0)),
            total_latency_ms=float(d.get("totalLatencyMs", 0.0)),
            # JSON numbers already: no per-sample conversion (this runs on every request).
            first_chunk_ms=tuple(d.get("firstChunkMs") or ()),
            last_error=d.get("lastError"),
            last_error_at=d.get("lastErrorAt"),
            # A record written before recent counts existed has none: an empty window.
            recent={int(k): (int(r), int(f)) for k, r, f in d.get("recent10s") or ()},
        )

    @property
    def avg_latency_ms(self) -> float:
        """Mean attempt duration over finished attempts."""
        return self.total_latency_ms / self.requests if self.requests else 0.0

    def first_chunk_percentile(self, p: float) -> float | None:
        """A percentile (0..100) of first-chunk latency over the recent successes."""
        if not self.first_chunk_ms:
            return None
        if len(self.first_chunk_ms) == 1:
            return self.first_chunk_ms[0]
        cuts = statistics.quantiles(self.first_chunk_ms, n=100, method="inclusive")
        return cuts[max(0, min(98, round(p) - 1))]

    def recent_counts(self, now: float) -> tuple[int, int]:
        """(requests, failures) of the 10-second buckets overlapping the last 60 s: at
        least the last minute, at most 70 s of it (a failure 59 s ago is never missed)."""
        oldest = math.floor(now / RECENT_BUCKET_S) - (RECENT_BUCKETS - 1)
        requests = failures = 0
        for bucket, (r, f) in self.recent.items():
            if bucket >= oldest:
                requests += r
                failures += f
        return requests, failures


def _count_recent(
    recent: Mapping[int, tuple[int, int]], at: float, failed: bool
) -> dict[int, tuple[int, int]]:
    """``recent`` with one attempt added at ``at``, buckets older than 70 s dropped."""
    bucket = math.floor(at / RECENT_BUCKET_S)
    oldest = bucket - (RECENT_BUCKETS - 1)
    kept = {k: v for k, v in recent.items() if k >= oldest}
    r, f = kept.get(bucket, (0, 0))
    kept[bucket] = (r + 1, f + failed)
    return kept


def record_attempt(
    m: MemberMetrics,
    outcome: Outcome,
    *,
    latency_ms: float,
    first_chunk_ms: float | None = None,
    tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    error: str | None = None,
    at: float | None = None,
    malformed: int = 0,
    interrupted: bool = False,
    continued: bool = False,
) -> MemberMetrics:
    """Count one finished attempt (``tokens``: what the member was billed for; ``at``,
    when it ended, also counts it in the recent window that ``lbprovider top`` shows)."""
    if outcome is Outcome.CANCELLED:
        return replace(m, cancelled=m.cancelled + 1)
    samples = m.first_chunk_ms
    if first_chunk_ms is not None:
        samples = (*samples[-(_SAMPLES - 1) :], round(first_chunk_ms, 3))
    ok = outcome is Outcome.SUCCESS
    recent = m.recent if at is None else _count_recent(m.recent, at, not ok)
    return replace(
        m,
        requests=m.requests + 1,
        successes=m.successes + ok,
        failures=m.failures + (not ok),
        timeouts=m.timeouts + (outcome is Outcome.TIMEOUT),
        tokens=m.tokens + tokens,
        cache_read_tokens=m.cache_read_tokens + cache_read_tokens,
        cache_write_tokens=m.cache_write_tokens + cache_write_tokens,
        malformed=m.malformed + malformed,
        interruptions=m.interruptions + interrupted,
        continuations=m.continuations + continued,
        total_latency_ms=m.total_latency_ms + latency_ms,
        first_chunk_ms=samples,
        last_error=error if error is not None else m.last_error,
        last_error_at=at if error is not None else m.last_error_at,
        recent=recent,
    )


def record_hedge_lost(m: MemberMetrics) -> MemberMetrics:
    """Count one attempt cancelled because a hedge (or the attempt it hedged) served."""
    return replace(m, hedges_lost=m.hedges_lost + 1)


def record_skip(m: MemberMetrics, *, headroom: bool = False) -> MemberMetrics:
    """Count one skip (breaker open, probe in flight, TPM, bench; ``headroom``: no
    rate-limit headroom left, also counted in ``headroomSkips``)."""
    return replace(m, skips=m.skips + 1, headroom_skips=m.headroom_skips + headroom)


def _ms(t: float | None) -> int | None:
    return None if t is None else round(t * 1000)


def build_stats(
    *,
    profile: str,
    policy: str,
    members: Sequence[str],
    models: Mapping[str, str],
    lb: LBRecord,
    metrics: Mapping[str, MemberMetrics],
    breakers: Mapping[str, BreakerRecord],
    tpm: Mapping[str, Buckets],
    now: float,
    window_s: float,
    rate_limits: Mapping[str, RateLimit | None] | None = None,
) -> dict[str, Any]:
    """The ``stats --json`` object (times are epoch milliseconds)."""
    backend: dict[str, Any] = {}
    states: dict[str, Any] = {}
    for name in members:
        m = metrics.get(name, MemberMetrics())
        p50, p95 = m.first_chunk_percentile(50), m.first_chunk_percentile(95)
        recent_requests, recent_failures = m.recent_counts(now)
        backend[name] = {
            "requests": m.requests,
            "successes": m.successes,
            "failures": m.failures,
            "timeouts": m.timeouts,
            "tokens": m.tokens,
            "cacheReadTokens": m.cache_read_tokens,
            "cacheWriteTokens": m.cache_write_tokens,
            "headroomSkips": m.headroom_skips,
            "hedgesLost": m.hedges_lost,
            "totalLatencyMs": round(m.total_latency_ms, 3),
            "avgLatencyMs": round(m.avg_latency_ms, 3),
            "cancelled": m.cancelled,
            "skips": m.skips,
            "malformedChunks": m.malformed,
            "interruptions": m.interruptions,
            "continuations": m.continuations,
            "firstChunkP50Ms": None if p50 is None else round(p50, 3),
            "firstChunkP95Ms": None if p95 is None else round(p95, 3),
            "lastError": m.last_error,
            "lastErrorAt": _ms(m.last_error_at),
            "recent60s": {"requests": recent_requests, "failures": recent_failures},
        }
        # SPEC §3.6: what the member last said of its rate limits, while it holds.
        said = headroom.to_report((rate_limits or {}).get(name), now)
        if said is not None:
            backend[name]["rateLimit"] = said
        b = breakers.get(name, BreakerRecord())
        states[name] = {
            "state": b.effective_state(now).value,
            "failures": b.failures_in_window(now, window_s),
            "openedAt": _ms(b.opened_at),
            "recoveryAt": _ms(b.recovery_at),
            "manual": b.manual,
        }
    return {
        "profileName": profile,
        "policy": policy,
        "members": list(members),
        "totalRequests": lb.total,
        "failbacks": lb.failbacks,
        # [v3] affinity, hedging and panic probes (SPEC §6): 0 before anything happened.
        **{name: lb.counters.get(name, 0) for name in PROFILE_V3_COUNTERS},
        "lastSelected": lb.last_selected,
        "lastSelectedModel": lb.last_model or (models.get(lb.last_selected or "")),
        "profileCounts": {n: lb.counts.get(n, 0) for n in members},
        "backendMetrics": backend,
        "circuitBreakerStates": states,
        "currentTPM": {n: round(current_tpm(tpm.get(n), now), 3) for n in members},
    }
