"""Per-member circuit breakers (SPEC §3.3) as pure transitions over a stored record.

A breaker is a :class:`BreakerRecord` in the state store, keyed by member name and
shared by every load balancer and every process.  Each function here takes the
record and the current time and returns the next record; the state store applies
it atomically (read-modify-write), which is what makes "exactly one half-open
probe" hold across tasks and processes.  Thresholds come from the calling load
balancer's settings (:class:`BreakerPolicy`).

The half-open probe holds its slot until it finishes, however slow: it takes a lease
of :data:`PROBE_LEASE_S` that its process renews every :data:`PROBE_RENEW_S` while the
probe runs (``selection.keep_probe``).  Only a probe whose process died stops renewing, and
its slot frees when the lease runs out.

Why not pybreaker's code (docs/design.md): its clock is ``datetime.now`` inside the
module, it counts consecutive failures with no window, half-open admits every
concurrent call, it has no asyncio support and counts ``CancelledError``, and its
storage API is per attribute, not an atomic update.  We keep its shape: one state
per behaviour, pluggable storage (the state store), listeners (the event hook).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lbprovider.settings import LBSettings


__all__ = [
    "PROBE_LEASE_S",
    "PROBE_RENEW_S",
    "Admission",
    "BreakerPolicy",
    "BreakerRecord",
    "BreakerState",
    "admit",
    "bench",
    "on_failure",
    "on_release",
    "on_success",
    "panic_probe",
    "renew_probe",
    "unbench",
]


PROBE_LEASE_S = 30.0
PROBE_RENEW_S = 10.0


class BreakerState(StrEnum):
    """The three states of SPEC §3.3."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Admission(StrEnum):
    """What the breaker says to one attempt."""

    ALLOW = "allow"  # closed: go ahead
    PROBE = "probe"  # half-open: this request is the one probe
    SKIP = "skip"  # open, benched, or half-open with its probe in flight


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The thresholds of the load balancer making the call, in seconds."""

    enabled: bool = False
    threshold: int = 3
    window_s: float = 60.0
    recovery_s: float = 30.0
    max_recovery_s: float = 300.0

    @classmethod
    def from_settings(cls, s: LBSettings) -> BreakerPolicy:
        """Read the ``circuit_breaker_*`` settings."""
        return cls(
            enabled=s.circuit_breaker_enabled,
            threshold=s.circuit_breaker_failure_threshold,
            window_s=s.circuit_breaker_failure_window_ms / 1000,
            recovery_s=s.circuit_breaker_recovery_timeout_ms / 1000,
            max_recovery_s=s.circuit_breaker_max_recovery_timeout_ms / 1000,
        )


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """One member's breaker, as stored. Times are epoch seconds."""

    state: BreakerState = BreakerState.CLOSED
    failures: tuple[float, ...] = ()  # failure times inside the window
    opened_at: float | None = None
    recovery_at: float | None = None  # open until then
    recovery_s: float = 0.0  # the open period in force (doubles on each re-open)
    probe_started_at: float | None = None  # half-open: when the probe was admitted
    probe_until: float | None = None  # half-open: the probe's lease (renewed while it runs)
    probe_id: str | None = None  # which probe holds the lease
    manual: bool = False  # benched by an operator

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state store."""
        return {
            "state": self.state.value,
            "failures": list(self.failures),
            "openedAt": self.opened_at,
            "recoveryAt": self.recovery_at,
            "recoveryS": self.recovery_s,
            "probeStartedAt": self.probe_started_at,
            "probeUntil": self.probe_until,
            "probeId": self.probe_id,
            "manual": self.manual,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> BreakerRecord:
        """Inverse of :meth:`to_dict` (None → a fresh closed breaker)."""
        if not d:
            return cls()
        return cls(
            state=BreakerState(d.get("state", "closed")),
            failures=tuple(float(x) for x in d.get("failures", ())),
            opened_at=d.get("openedAt"),
            recovery_at=d.get("recoveryAt"),
            recovery_s=float(d.get("recoveryS", 0.0)),
            probe_started_at=d.get("probeStartedAt"),
            probe_until=d.get("probeUntil"),
            probe_id=d.get("probeId"),
            manual=bool(d.get("manual", False)),
        )

    def effective_state(self, now: float) -> BreakerState:
        """The state a caller would meet now (an expired open period reads half-open)."""
        if (
            self.state is BreakerState.OPEN
            and self.recovery_at is not None
            and (now >= self.recovery_at)
        ):
            return BreakerState.CLOSED if self.manual else BreakerState.HALF_OPEN
        return self.state

    def failures_in_window(self, now: float, window_s: float) -> int:
        """Failures no older than the window."""
        return sum(1 for t in self.failures if t > now - window_s)


def _closed() -> BreakerRecord:
    return BreakerRecord()


def _probe(rec: BreakerRecord, now: float, probe_id: str) -> BreakerRecord:
    return replace(
        rec,
        state=BreakerState.HALF_OPEN,
        probe_started_at=now,
        probe_until=now + PROBE_LEASE_S,
        probe_id=probe_id,
    )


def panic_probe(rec: BreakerRecord, now: float, probe_id: str) -> tuple[bool, BreakerRecord]:
    """Take a panic probe (SPEC §3.3): an open member (not benched) is probed before its
    recovery time, held like a half-open probe; anything else is not taken."""
    if rec.state is BreakerState.OPEN and not rec.manual:
        return True, _probe(rec, now, probe_id)
    return False, rec


def admit(
    rec: BreakerRecord, now: float, policy: BreakerPolicy, probe_id: str = "probe"
) -> tuple[Admission, BreakerRecord]:
    """Decide one attempt. Taking the half-open probe (``probe_id`` holds its lease) is
    part of the same update."""
    if rec.state is BreakerState.OPEN:
        if rec.recovery_at is not None and now < rec.recovery_at:
            return Admission.SKIP, rec
        if rec.manual:  # a bench ends by itself: straight back to closed
            return Admission.ALLOW, _closed()
        if not policy.enabled:
            return Admission.ALLOW, rec
        return Admission.PROBE, _probe(rec, now, probe_id)
    if rec.state is BreakerState.HALF_OPEN:
        if not policy.enabled:
            return Admission.ALLOW, rec
        if rec.probe_until is not None and now < rec.probe_until:
            return Admission.SKIP, rec
        # No probe, or one whose process died and stopped renewing its lease.
        return Admission.PROBE, _probe(rec, now, probe_id)
    return Admission.ALLOW, rec


def renew_probe(rec: BreakerRecord, probe_id: str, now: float) -> BreakerRecord:
    """Extend the lease of probe ``probe_id`` if it still holds the slot."""
    if rec.state is BreakerState.HALF_OPEN and rec.probe_id == probe_id:
        return replace(rec, probe_until=now + PROBE_LEASE_S)
    return rec


def _open(
    rec: BreakerRecord, now: float, recovery_s: float, retry_after: float | None
) -> BreakerRecord:
    until = now + max(recovery_s, retry_after or 0.0)
    if rec.recovery_at is not None and rec.state is BreakerState.OPEN:
        until = max(until, rec.recovery_at)  # never shorten an open period
    return BreakerRecord(
        state=BreakerState.OPEN,
        failures=rec.failures,
        opened_at=now,
        recovery_at=until,
        recovery_s=recovery_s,
    )


def on_failure(
    rec: BreakerRecord,
    now: float,
    policy: BreakerPolicy,
    retry_after: float | None = None,
    *,
    probe: bool = False,
    open_now: bool = False,
) -> BreakerRecord:
    """A member's final failure for one request.

    ``open_now``: the backend asked for a longer wait than we retry after (a long
    ``Retry-After``), so the breaker opens at once, at least that long, whatever the
    count of failures.
    """
    if not policy.enabled or rec.manual:
        return rec
    if probe or rec.state is BreakerState.HALF_OPEN:
        doubled = min(max(rec.recovery_s, policy.recovery_s) * 2, policy.max_recovery_s)
        return _open(rec, now, doubled, retry_after)
    if open_now and rec.state is BreakerState.CLOSED:
        failures = (*(t for t in rec.failures if t > now - policy.window_s), now)
        return _open(replace(rec, failures=failures), now, policy.recovery_s, retry_after)
    if rec.state is BreakerState.OPEN:
        if retry_after and (rec.recovery_at is None or now + retry_after > rec.recovery_at):
            return replace(rec, recovery_at=now + retry_after)
        return rec
    failures = (*(t for t in rec.failures if t > now - policy.window_s), now)
    if len(failures) >= policy.threshold:
        return _open(replace(rec, failures=failures), now, policy.recovery_s, retry_after)
    return replace(rec, failures=failures)


def on_success(
    rec: BreakerRecord, now: float, policy: BreakerPolicy, *, probe: bool = False
) -> BreakerRecord:
    """A success. A probe's success closes the breaker (failures and recovery reset)."""
    if probe or rec.state is BreakerState.HALF_OPEN:
        return _closed()
    return rec


def on_release(rec: BreakerRecord, *, probe: bool) -> BreakerRecord:
    """An attempt that says nothing about health (cancelled, request-specific error)."""
    if probe and rec.state is BreakerState.HALF_OPEN:
        return replace(rec, probe_started_at=None, probe_until=None, probe_id=None)
    return rec


def bench(rec: BreakerRecord, now: float, duration_s: float) -> BreakerRecord:
    """Open a member by hand for ``duration_s``."""
    return BreakerRecord(
        state=BreakerState.OPEN,
        failures=rec.failures,
        opened_at=now,
        recovery_at=now + duration_s,
        recovery_s=rec.recovery_s,
        manual=True,
    )


def unbench(rec: BreakerRecord) -> BreakerRecord:
    """Close a member by hand (also clears an automatic open)."""
    return _closed()
