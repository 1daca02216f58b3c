"""Policies (SPEC §3.1): the order in which a request tries the members.

Per load balancer the state store holds one record (``lb:<profile>``): the
round-robin counter, the request ticket counter, the sticky index and which ticket
last moved it, plus the counters the stats report (total requests, last served,
per-member counts).  Every change is a pure function applied atomically by the
store, so round-robin stays exact under concurrency and across processes.

Sticky "newest wins": each request takes a ticket when it starts; it may move the
sticky index only if no request with a newer ticket has moved it already.  A slow,
older request therefore never drags the index back to where a newer one left it.

Fail-back: the record remembers since when the sticky index has been away from member
0 (``away_since``).  The first request to start after ``failback_after`` has passed
claims the fail-back in the same update that gives it its ticket — it restarts the
timer, so one request per interval probes, in every process sharing the store — and
gives the claim back (:func:`unclaim_failback`) if member 0's breaker refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from lbprovider.config import Policy

__all__ = [
    "LBRecord",
    "Start",
    "begin",
    "candidates",
    "claim_hedge",
    "claim_panic",
    "count",
    "failed_back",
    "move_sticky",
    "note_request",
    "release_panic",
    "served",
    "unclaim_failback",
]


@dataclass(frozen=True, slots=True)
class LBRecord:
    """One load balancer's routing state, as stored."""

    rr: int = 0  # requests started under round-robin (the next start is rr % n)
    ticket: int = 0  # requests started (any policy)
    sticky: int = 0  # failover: the member index requests start at
    sticky_ticket: int = 0  # the ticket of the request that last moved `sticky`
    away_since: float | None = None  # failover: since when `sticky` is not 0 (epoch s)
    failbacks: int = 0  # fail-backs that brought `sticky` back to 0
    total: int = 0  # requests that ended (served or not)
    last_selected: str | None = None
    last_model: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # requests served, per member
    # [v3] affinityHits, affinityMisses, hedges, hedgeWins, panicProbes (SPEC §6).
    counters: dict[str, int] = field(default_factory=dict)
    # Requests and hedges started, per 10-second bucket, for the hedge budget (SPEC §4.3).
    window: dict[str, list[int]] = field(default_factory=dict)
    panic_id: str | None = None  # the panic probe in flight (SPEC §3.3), one per LB...
    panic_until: float | None = None  # ...until its lease ends (renewed while it runs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state store."""
        return {
            "rr": self.rr,
            "ticket": self.ticket,
            "sticky": self.sticky,
            "stickyTicket": self.sticky_ticket,
            "awaySince": self.away_since,
            "failbacks": self.failbacks,
            "total": self.total,
            "lastSelected": self.last_selected,
            "lastModel": self.last_model,
            "counts": dict(self.counts),
            "counters": dict(self.counters),
            "window": {k: list(v) for k, v in self.window.items()},
            "panicId": self.panic_id,
            "panicUntil": self.panic_until,
        }

    def without_counters(self) -> LBRecord:
        """The routing state only (indices, tickets, the fail-back timer): ``stats --reset``."""
        return LBRecord(
            rr=self.rr,
            ticket=self.ticket,
            sticky=self.sticky,
            sticky_ticket=self.sticky_ticket,
            away_since=self.away_since,
            window=self.window,
            panic_id=self.panic_id,
            panic_until=self.panic_until,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LBRecord:
        """Inverse of :meth:`to_dict`."""
        if not d:
            return cls()
        return cls(
            rr=int(d.get("rr", 0)),
            ticket=int(d.get("ticket", 0)),
            sticky=int(d.get("sticky", 0)),
            sticky_ticket=int(d.get("stickyTicket", 0)),
            away_since=d.get("awaySince"),
            failbacks=int(d.get("failbacks", 0)),
            total=int(d.get("total", 0)),
            last_selected=d.get("lastSelected"),
            last_model=d.get("lastModel"),
            counts=dict(d.get("counts") or {}),
            counters=dict(d.get("counters") or {}),
            window={k: list(v) for k, v in (d.get("window") or {}).items()},
            panic_id=d.get("panicId"),
            panic_until=d.get("panicUntil"),
        )


@dataclass(frozen=True, slots=True)
class Start:
    """Where one request starts, and its ticket.

    ``failback``: this request first makes one attempt on member 0 (it claimed the
    fail-back at ``claimed_at``; ``away_since`` is what the timer said before).
    """

    index: int
    ticket: int
    failback: bool = False
    claimed_at: float | None = None
    away_since: float | None = None


def begin(
    rec: LBRecord, policy: Policy, n: int, now: float = 0.0, failback_after_s: float = 0.0
) -> tuple[Start, LBRecord]:
    """Take a ticket and the start index (round-robin rotates one step per request);
    under ``failover``, claim the fail-back when it is due."""
    ticket = rec.ticket + 1
    if policy is Policy.ROUNDROBIN:
        return Start(rec.rr % n, ticket), replace(rec, rr=rec.rr + 1, ticket=ticket)
    index = rec.sticky if 0 <= rec.sticky < n else 0
    rec = replace(rec, ticket=ticket)
    if index == 0 or failback_after_s <= 0:
        return Start(index, ticket), rec
    if rec.away_since is None:  # a record from before fail-back: the timer starts now
        return Start(index, ticket), replace(rec, away_since=now)
    if now - rec.away_since < failback_after_s:
        return Start(index, ticket), rec
    start = Start(index, ticket, failback=True, claimed_at=now, away_since=rec.away_since)
    return start, replace(rec, away_since=now)


def unclaim_failback(rec: LBRecord, start: Start) -> LBRecord:
    """Give back an unused fail-back claim (member 0's breaker refused): the interval
    is not used up, so the next request may make it."""
    if start.failback and rec.away_since == start.claimed_at:
        return replace(rec, away_since=start.away_since)
    return rec


def failed_back(rec: LBRecord, ticket: int, now: float) -> LBRecord:
    """A fail-back attempt succeeded: the index returns to member 0."""
    moved = move_sticky(rec, 0, ticket, now)
    return replace(moved, failbacks=rec.failbacks + 1) if moved is not rec else rec


def candidates(start: int, n: int) -> Iterator[int]:
    """Member indices from ``start``, wrapping once: O(1) to begin, lazily continued."""
    for i in range(n):
        yield (start + i) % n


def move_sticky(rec: LBRecord, index: int, ticket: int, now: float = 0.0) -> LBRecord:
    """Set the sticky index, unless a newer request has moved it already; leaving
    member 0 starts the fail-back timer, returning to it stops the timer."""
    if ticket < rec.sticky_ticket:
        return rec
    if index == 0:
        away_since = None
    elif rec.sticky == 0 or rec.away_since is None:
        away_since = now
    else:
        away_since = rec.away_since
    return replace(rec, sticky=index, sticky_ticket=ticket, away_since=away_since)


def served(rec: LBRecord, member: str | None, model: str | None) -> LBRecord:
    """Count one finished request (``member`` None when nothing served it)."""
    if member is None:
        return replace(rec, total=rec.total + 1)
    counts = dict(rec.counts)
    counts[member] = counts.get(member, 0) + 1
    return replace(rec, total=rec.total + 1, last_selected=member, last_model=model, counts=counts)


def count(rec: LBRecord, name: str, n: int = 1) -> LBRecord:
    """Add ``n`` to one of the load balancer's [v3] counters (``affinityHits``, ...)."""
    counters = dict(rec.counters)
    counters[name] = counters.get(name, 0) + n
    return replace(rec, counters=counters)


WINDOW_BUCKET_S = 10
WINDOW_S = 60


def _bucket(now: float) -> int:
    return int(now // WINDOW_BUCKET_S)


def _recent(rec: LBRecord, now: float) -> dict[str, list[int]]:
    """The window's buckets that overlap the last minute."""
    oldest = _bucket(now - WINDOW_S)
    return {k: v for k, v in rec.window.items() if int(k) >= oldest}


def note_request(rec: LBRecord, now: float) -> LBRecord:
    """Count a request started, for the hedge budget."""
    window = _recent(rec, now)
    key = str(_bucket(now))
    requests, hedges = window.get(key, [0, 0])
    window[key] = [requests + 1, hedges]
    return replace(rec, window=window)


def claim_hedge(rec: LBRecord, now: float, percent: int) -> tuple[bool, LBRecord]:
    """May this request start a hedge now (SPEC §4.3)?  While the hedges started in the
    last 60 s, this one included, number at most 1 + percent/100 × the requests started
    then (so 20 requests at 10 % allow 3): yes, and it is counted."""
    window = _recent(rec, now)
    requests = sum(v[0] for v in window.values())
    hedges = sum(v[1] for v in window.values())
    if hedges + 1 > 1 + percent / 100 * requests:
        return False, rec
    key = str(_bucket(now))
    started, counted = window.get(key, [0, 0])
    window[key] = [started, counted + 1]
    return True, count(replace(rec, window=window), "hedges")


def claim_panic(rec: LBRecord, now: float, probe_id: str, lease_s: float) -> tuple[bool, LBRecord]:
    """Take the load balancer's one panic probe (SPEC §3.3), unless one is in flight."""
    if rec.panic_until is not None and now < rec.panic_until and rec.panic_id != probe_id:
        return False, rec
    claimed = replace(rec, panic_id=probe_id, panic_until=now + lease_s)
    return True, count(claimed, "panicProbes")


def release_panic(rec: LBRecord, probe_id: str) -> LBRecord:
    """The panic probe ended: the next all-open request may make one."""
    if rec.panic_id != probe_id:
        return rec
    return replace(rec, panic_id=None, panic_until=None)
