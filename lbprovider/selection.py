"""Selection (SPEC §3.1–3.2): who may be tried for one request, and in which order.

It decides and never calls a backend.  :class:`Selection` reads and updates the state
store for what a request must agree on with every other request — its ticket and start
index (:meth:`Selection.start`, one atomic update, fail-back claim included) and each
member's admission (:meth:`Selection.admit`: breaker, TPM rule) — and hands out a
:class:`Plan`: the order of that request's attempts, told how each one failed.

The plan, by policy:

- ``roundrobin``: *passes* over the members from the start member, one attempt per
  member per pass.  A member that failed retryably comes back in the next pass (at most
  ``failover_retry_count`` passes), after its wait (:class:`~lbprovider.retry.RetryPolicy`);
  one that failed otherwise, timed out before its first chunk, or asked for a longer
  ``Retry-After`` than we wait, does not.
- ``failover``: from the sticky member in order of preference, each member retried on
  the spot (after its wait) up to ``failover_retry_count`` attempts, then the next.  A
  request that claimed the fail-back first makes one single attempt on member 0, then
  goes on from the sticky member without it.
- Members the TPM rule skipped come last, so the rule never leaves a request with no
  candidate.

A member's breaker admission is asked once per request, at its first attempt; its
retries are the same request's business.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbprovider import breaker as brk
from lbprovider import headroom, policies, window
from lbprovider.clock import Clock
from lbprovider.config import LoadBalancerConfig, Member, Policy
from lbprovider.errors import BackendError
from lbprovider.events import Outcome
from lbprovider.ledger import Change, Key, Ledger, breaker_key, headroom_key, lb_key, tpm_key
from lbprovider.retry import RetryPolicy

__all__ = [
    "OPEN_REASON",
    "Admitted",
    "Candidate",
    "Known",
    "Plan",
    "Selection",
    "keep_probe",
    "state_changes",
]

Known = dict[Key[Any], Any]  # records read at a request's start, by key
OPEN_REASON = Outcome.BREAKER_OPEN  # an open breaker alone (a panic probe may follow)
# Members whose admission records a request's start reads, from the likely start member:
# the first and its next two cover a request and its usual failovers.
READ_AHEAD = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    """One attempt the plan allows: member ``index``, not before ``not_before``
    (monotonic seconds).  ``first``: the member's first attempt in this request (its
    admission is still to be asked); ``failback``: the single fail-back attempt on
    member 0; ``deferred``: skipped by the TPM rule earlier, tried now regardless."""

    index: int
    not_before: float = 0.0
    first: bool = True
    failback: bool = False
    deferred: bool = False


class Plan:
    """The order of one request's attempts (see the module docstring)."""

    def __init__(
        self,
        policy: Policy,
        n: int,
        start: policies.Start,
        retry: RetryPolicy,
        first: int | None = None,
    ) -> None:
        self._policy = policy
        self._retry = retry
        order = list(policies.candidates(start.index, n))
        self._failback = start.failback
        if start.failback:
            first = 0
        if first is not None:
            order = [first] + [i for i in order if i != first]
        self._queue: deque[int] = deque(order)
        self._next_pass: list[int] = []
        self._again: int | None = None
        self._deferred: list[int] = []
        self._in_deferred = False
        self._pass = 1
        self._attempts = [0] * n
        self._ready = [0.0] * n

    def next(self) -> Candidate | None:
        """The next attempt, or None when every allowed attempt has been made."""
        while True:
            if self._again is not None:
                index, self._again = self._again, None
                return self._candidate(index)
            if self._queue:
                return self._candidate(self._queue.popleft())
            if self._next_pass and self._pass < self._retry.attempts:
                self._pass += 1
                self._queue, self._next_pass = deque(self._next_pass), []
                continue
            if self._deferred:
                self._queue, self._deferred = deque(self._deferred), []
                self._in_deferred = True
                continue
            return None

    def _candidate(self, index: int) -> Candidate:
        failback = self._failback and index == 0 and self._attempts[0] == 0
        return Candidate(
            index,
            not_before=self._ready[index],
            first=self._attempts[index] == 0,
            failback=failback,
            deferred=self._in_deferred,
        )

    def give_back(self, candidate: Candidate) -> None:
        """Put a candidate taken but not tried back at the front (a hedge not started)."""
        self._queue.appendleft(candidate.index)

    def defer(self, candidate: Candidate) -> None:
        """The TPM rule skipped this member: try it after everyone else."""
        self._deferred.append(candidate.index)

    def failed(self, candidate: Candidate, err: BackendError, now: float) -> bool:
        """Record a failed attempt (``now``: monotonic seconds); True when it is the
        member's final failure in this request (it will not be tried again)."""
        index = candidate.index
        self._attempts[index] += 1
        if candidate.failback or self._attempts[index] >= self._retry.attempts:
            return True
        wait = self._retry.wait(err, self._attempts[index])
        if wait is None:
            return True
        self._ready[index] = now + wait
        if self._policy is Policy.FAILOVER:
            self._again = index
        else:
            self._next_pass.append(index)
        return False

    def succeeded(self, candidate: Candidate) -> None:
        """Record the attempt that produced a first chunk: nothing more to plan."""
        self._attempts[candidate.index] += 1


@dataclass(slots=True)
class Admitted:
    """A member's admission for one request: what its breaker said, on which record,
    whether the TPM rule skips it, and the breaker changes the decision made."""

    admission: brk.Admission
    record: brk.BreakerRecord
    tpm_skip: bool = False
    headroom_skip: bool = False  # it said it has no requests or tokens left (SPEC §3.6)
    probe_id: str | None = None
    changes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> bool:
        """Not to be tried now (breaker, TPM or headroom rule)."""
        return self.admission is brk.Admission.SKIP or self.tpm_skip or self.headroom_skip

    @property
    def deferred(self) -> bool:
        """Skipped by a rule that never leaves a request with no candidate: tried last."""
        return self.admission is not brk.Admission.SKIP and (self.tpm_skip or self.headroom_skip)

    def skip_reason(self, policy: brk.BreakerPolicy) -> tuple[Outcome, float | None]:
        """Why (the SKIP event's outcome), and until when (epoch seconds)."""
        rec = self.record
        if self.tpm_skip:
            return Outcome.TPM, None
        if self.headroom_skip:
            return Outcome.HEADROOM, None
        if rec.manual:
            return Outcome.BENCHED, rec.recovery_at
        if rec.state is brk.BreakerState.HALF_OPEN:
            return Outcome.PROBE_IN_FLIGHT, rec.probe_until
        return Outcome.BREAKER_OPEN, rec.recovery_at


class Selection:
    """Start, admission and plan for the requests of one load balancer."""

    def __init__(
        self,
        config: LoadBalancerConfig,
        *,
        ledger: Ledger,
        clock: Clock,
        breaker_policy: brk.BreakerPolicy,
        retry: RetryPolicy,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.breaker_policy = breaker_policy
        self.retry = retry
        # The start index this process saw last: where the next request likely starts.
        self._last_start = 0

    async def start(self, extra: Sequence[Key[Any]] = ()) -> tuple[policies.Start, Known]:
        """This request's ticket and start index, fail-back claim included (atomic), and
        what its first admissions likely need to know, read in the same trip to the store.

        The start index is decided inside that trip, so which records it needs is
        predicted: from where this process's last request started (the sticky member
        under ``failover``, the next one under ``roundrobin``), :data:`READ_AHEAD`
        members, and member 0 (a fail-back).  So the trip costs the same at 3 members or
        1000; a member outside it (another process moved the index, a long failover) is
        read when admitted (:meth:`admit`).  ``extra``: other records the request needs
        (its conversation's, SPEC §3.5), read in the same trip."""
        cfg, now = self.config, self.clock.now()
        n = len(cfg.members)
        failback_s = cfg.settings.failback_after_ms / 1000

        hedging = cfg.settings.hedge_after_ms > 0

        def begin(rec: policies.LBRecord) -> tuple[policies.Start, policies.LBRecord]:
            start, new = policies.begin(rec, cfg.policy, n, now, failback_s)
            # The hedge budget counts the requests started (SPEC §4.3).
            return start, policies.note_request(new, now) if hedging else new

        step = 1 if cfg.policy is Policy.ROUNDROBIN else 0
        likely = (self._last_start + step) % n
        ahead = {0} | {(likely + i) % n for i in range(min(n, READ_AHEAD))}
        names = [cfg.members[i].name for i in sorted(ahead)]
        read = [*self._admission_keys(names), *extra]
        decided = await self.ledger.decide(lb_key(cfg.name), begin, read=read)
        self._last_start = decided.decision.index
        return decided.decision, decided.known

    def _admission_keys(self, names: list[str], *, tpm: bool = True) -> list[Key[Any]]:
        """The records the admissions of the members ``names`` read: breaker, and TPM and
        headroom when those rules apply."""
        keys: list[Key[Any]] = [breaker_key(n) for n in names]
        if tpm and self.config.settings.tpm_threshold:
            keys += [tpm_key(n) for n in names]
        if tpm and self.config.settings.headroom_enabled:
            keys += [headroom_key(n) for n in names]
        return keys

    async def unclaim_failback(self, start: policies.Start) -> None:
        """Member 0's breaker refused the fail-back: the interval is not used up."""
        await self.ledger.aapply(
            {lb_key(self.config.name): lambda rec: policies.unclaim_failback(rec, start)}
        )

    def plan(self, start: policies.Start, first: int | None = None) -> Plan:
        """The order of this request's attempts (``first``: a conversation's member, tried
        first when admitted, SPEC §3.5)."""
        return Plan(self.config.policy, len(self.config.members), start, self.retry, first)

    async def admit(
        self,
        member: Member,
        *,
        tpm: bool = True,
        known: Known | None = None,
        prompt_tokens: int = 0,
    ) -> Admitted:
        """May ``member`` be tried? Its breaker (taking the half-open probe is part of the
        same atomic update) and, when ``tpm``, the TPM and headroom rules (never for a
        probe or a deferred attempt; ``prompt_tokens``: the request's estimate, for
        headroom).  ``known``: records read moments ago (at the request's start), used if
        complete."""
        threshold = self.config.settings.tpm_threshold if tpm else None
        keys = self._admission_keys([member.name], tpm=tpm)
        if known is not None and all(k in known for k in keys):
            records = known
        else:
            records = await self.ledger.aread(keys)
        current: brk.BreakerRecord = records[keys[0]]
        if current.state is brk.BreakerState.CLOSED:
            admitted = Admitted(brk.Admission.ALLOW, current)  # the common case: a read only
        else:
            admitted = await self._admit_not_closed(member)
        if admitted.admission is brk.Admission.ALLOW and threshold:
            tpm_now = window.current_tpm(records[tpm_key(member.name)], self.clock.now())
            admitted.tpm_skip = window.should_skip(tpm_now, threshold)
        limits = headroom_key(member.name)
        if admitted.admission is brk.Admission.ALLOW and limits in keys:
            admitted.headroom_skip = headroom.skip(records[limits], self.clock.now(), prompt_tokens)
        return admitted

    async def _admit_not_closed(self, member: Member) -> Admitted:
        now, policy, probe_id = self.clock.now(), self.breaker_policy, secrets.token_hex(8)
        decided = await self.ledger.decide(
            breaker_key(member.name), lambda rec: brk.admit(rec, now, policy, probe_id)
        )
        admission, change = decided.decision, decided.change
        return Admitted(
            admission,
            change.before if admission is brk.Admission.SKIP else change.after,
            probe_id=probe_id if admission is brk.Admission.PROBE else None,
            changes=state_changes(change),
        )


def state_changes(change: Change[brk.BreakerRecord]) -> list[str]:
    """The state a breaker moved to, if it moved (for a BREAKER event)."""
    return [change.after.state.value] if change.after.state is not change.before.state else []


async def keep_probe(ledger: Ledger, member: str, probe_id: str, clock: Clock) -> None:
    """Renew probe ``probe_id``'s lease on ``member`` every
    :data:`~lbprovider.breaker.PROBE_RENEW_S`, until cancelled (when the probe ends).
    Real time on purpose: the lease must outlive a slow probe in this process, whatever
    clock the engine is given."""
    key = breaker_key(member)

    def renew(now: float) -> Callable[[brk.BreakerRecord], brk.BreakerRecord]:
        return lambda rec: brk.renew_probe(rec, probe_id, now)

    while True:
        await asyncio.sleep(brk.PROBE_RENEW_S)
        await ledger.aapply({key: renew(clock.now())})
