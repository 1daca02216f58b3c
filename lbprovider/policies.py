"""Policies (SPEC §3.1): the order in which a request tries the members.

Per load balancer the state store holds one record (``lb:<profile>``): the
round-robin counter, the request ticket counter, the sticky index and which ticket
last moved it, plus the counters the stats report (total requests, last served,
per-member counts).  Every change is a pure function applied atomically by the
store, so round-robin stays exact under concurrency and across processes.

Sticky "newest wins": each request takes a ticket when it starts; it may move the
sticky index only if no request with a newer ticket has moved it already.  A slow,
older request therefore never drags the index back to where a newer one left it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from lbprovider.profiles import Policy

__all__ = ["LBRecord", "Start", "begin", "candidates", "move_sticky", "served"]


@dataclass(frozen=True, slots=True)
class LBRecord:
    """One load balancer's routing state, as stored."""

    rr: int = 0  # requests started under round-robin (the next start is rr % n)
    ticket: int = 0  # requests started (any policy)
    sticky: int = 0  # failover: the member index requests start at
    sticky_ticket: int = 0  # the ticket of the request that last moved `sticky`
    total: int = 0  # requests that ended (served or not)
    last_selected: str | None = None
    last_model: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # requests served, per member

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state store."""
        return {
            "rr": self.rr,
            "ticket": self.ticket,
            "sticky": self.sticky,
            "stickyTicket": self.sticky_ticket,
            "total": self.total,
            "lastSelected": self.last_selected,
            "lastModel": self.last_model,
            "counts": dict(self.counts),
        }

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
            total=int(d.get("total", 0)),
            last_selected=d.get("lastSelected"),
            last_model=d.get("lastModel"),
            counts=dict(d.get("counts") or {}),
        )


@dataclass(frozen=True, slots=True)
class Start:
    """Where one request starts, and its ticket."""

    index: int
    ticket: int


def begin(rec: LBRecord, policy: Policy, n: int) -> tuple[Start, LBRecord]:
    """Take a ticket and the start index (round-robin rotates one step per request)."""
    ticket = rec.ticket + 1
    if policy is Policy.ROUNDROBIN:
        return Start(rec.rr % n, ticket), replace(rec, rr=rec.rr + 1, ticket=ticket)
    index = rec.sticky if 0 <= rec.sticky < n else 0
    return Start(index, ticket), replace(rec, ticket=ticket)


def candidates(start: int, n: int) -> Iterator[int]:
    """Member indices from ``start``, wrapping once: O(1) to begin, lazily continued."""
    for i in range(n):
        yield (start + i) % n


def move_sticky(rec: LBRecord, index: int, ticket: int) -> LBRecord:
    """Set the sticky index, unless a newer request has moved it already."""
    if ticket < rec.sticky_ticket:
        return rec
    return replace(rec, sticky=index, sticky_ticket=ticket)


def served(rec: LBRecord, member: str | None, model: str | None) -> LBRecord:
    """Count one finished request (``member`` None when nothing served it)."""
    if member is None:
        return replace(rec, total=rec.total + 1)
    counts = dict(rec.counts)
    counts[member] = counts.get(member, 0) + 1
    return replace(rec, total=rec.total + 1, last_selected=member, last_model=model, counts=counts)
