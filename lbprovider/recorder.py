"""What the engine writes down: the effects of each outcome, and its events.

Each method is one outcome of the request flow (a skip, a failed attempt, a member's
final failure, a served or broken answer, a request nobody served) and applies its
effects — the member's metrics, its breaker, its TPM tokens, the load balancer's routing
record — in one atomic state-store update.  Counters are posted (write-behind: the
request does not wait for them); an update that may change a breaker is awaited, so its
event can be emitted.

:meth:`Recorder.emit` hands one :class:`~lbprovider.events.Event` to every hook.  A hook
that raises never fails a request: its first error is logged, the rest ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lbprovider import breaker as brk
from lbprovider import headroom, policies, stats, window
from lbprovider.affinity import AffinityRecord
from lbprovider.clock import Clock
from lbprovider.config import LoadBalancerConfig, Member, Policy
from lbprovider.errors import BackendError
from lbprovider.events import Event, EventHook, EventKind, Outcome
from lbprovider.ledger import (
    Key,
    Ledger,
    breaker_key,
    headroom_key,
    lb_key,
    metrics_key,
    tpm_key,
)
from lbprovider.selection import state_changes
from lbprovider.transport import Usage

__all__ = ["Part", "Recorder"]

logger = logging.getLogger("lbprovider")


@dataclass(frozen=True, slots=True)
class Part:
    """One member's part in one request, as it ended: the facts the recorder writes
    down, carried whole instead of as loose arguments.

    ``member`` at ``index``, in the request that started at ``start`` (its ticket and
    start index); ``probe``: it held the half-open probe; ``failback``: the fail-back
    attempt on member 0; ``continued``: it continued an interrupted answer; ``usage``:
    what it was billed for; times in milliseconds; ``malformed``: events it sent that
    could not be read.
    """

    member: Member
    index: int
    start: policies.Start
    probe: bool = False
    failback: bool = False
    continued: bool = False
    latency_ms: float = 0.0
    first_chunk_ms: float | None = None
    usage: Usage | None = None
    malformed: int = 0
    # The request's conversation (SPEC §3.5): the member that serves becomes its member.
    affinity: Key[AffinityRecord] | None = None


class Recorder:
    """Effects and events of one load balancer's requests."""

    def __init__(
        self,
        config: LoadBalancerConfig,
        *,
        ledger: Ledger,
        clock: Clock,
        breaker_policy: brk.BreakerPolicy,
        hooks: Sequence[EventHook] = (),
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.breaker_policy = breaker_policy
        self.hooks = list(hooks)
        self._broken_hooks: set[int] = set()
        self._failover = config.policy is Policy.FAILOVER

    # -- events ----------------------------------------------------------------------------

    def emit(
        self, kind: EventKind, member: str | None = None, outcome: str = "", **fields: Any
    ) -> None:
        """One event to every hook; a hook's exception is logged once and ignored."""
        if not self.hooks:
            return
        event = Event(
            kind=kind,
            profile=self.config.name,
            member=member,
            outcome=outcome,
            at=self.clock.now(),
            **fields,
        )
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                if id(hook) not in self._broken_hooks:
                    self._broken_hooks.add(id(hook))
                    logger.warning(
                        "event hook %r raised; ignoring it (requests go on)", hook, exc_info=True
                    )

    def emit_changes(self, member: str, changes: Sequence[str]) -> None:
        """One BREAKER event per state a breaker update moved to."""
        for state in changes:
            self.emit(EventKind.BREAKER, member, state)

    # -- outcomes --------------------------------------------------------------------------

    async def skipped(self, member: Member, outcome: Outcome) -> None:
        """The member was not tried (breaker open, probe in flight, bench, TPM or headroom
        rule)."""
        room = outcome is Outcome.HEADROOM
        await self._apply(member, metrics_step=lambda m: stats.record_skip(m, headroom=room))
        self.emit(EventKind.SKIP, member.name, outcome)

    async def attempt_cancelled(self, member: Member, number: int) -> None:
        """The caller went away before the member's first chunk: not a failure."""
        await self._apply(
            member,
            metrics_step=lambda m: stats.record_attempt(m, stats.Outcome.CANCELLED, latency_ms=0),
        )
        self.emit(EventKind.ATTEMPT, member.name, Outcome.CANCELLED, attempt=number)

    async def attempt_failed(
        self, member: Member, number: int, err: BackendError, latency_ms: float, *, timed_out: bool
    ) -> None:
        """One attempt failed before the caller saw anything: before its first chunk, or
        while a non-streaming caller's answer was read (the member may yet be retried)."""
        outcome = stats.Outcome.TIMEOUT if timed_out else stats.Outcome.FAILURE
        at = self.clock.now()
        await self._apply(
            member,
            metrics_step=lambda m: stats.record_attempt(
                m,
                outcome,
                latency_ms=latency_ms,
                error=err.reason(),
                at=at,
                interrupted=err.interrupted,
            ),
        )
        self.emit(
            EventKind.ATTEMPT,
            member.name,
            outcome.value,
            attempt=number,
            status=err.status,
            latency_ms=latency_ms,
            detail=err.message,
            failure=err.kind.value,
        )

    async def member_failed(self, part: Part, err: BackendError, *, open_now: bool) -> None:
        """A member's final failure in one request: its breaker, the sticky index
        (``open_now``: a ``Retry-After`` longer than we wait opens the breaker at once)."""
        member, index, probe, ticket = part.member, part.index, part.probe, part.start.ticket
        now, policy = self.clock.now(), self.breaker_policy
        if err.counts_for_breaker:
            breaker_step = lambda r: brk.on_failure(  # noqa: E731
                r, now, policy, err.retry_after, probe=probe, open_now=open_now
            )
        else:
            breaker_step = lambda r: brk.on_release(r, probe=probe)  # noqa: E731
        lb_step = None
        if self._failover and not part.failback:  # a failed fail-back leaves the index alone
            following = (index + 1) % len(self.config.members)
            lb_step = lambda r: policies.move_sticky(r, following, ticket, now)  # noqa: E731
        await self._apply(member, breaker_step=breaker_step, lb_step=lb_step, wait=True)
        if part.failback:
            self.emit(EventKind.FAILBACK, member.name, Outcome.FAILURE, status=err.status)
        self.emit(
            EventKind.FAILOVER, member.name, err.kind.value, status=err.status, detail=err.message
        )

    def headroom(self, member: Member, headers: Mapping[str, str]) -> None:
        """What an answer's rate-limit headers say, kept per member (SPEC §3.6); an answer
        without them leaves the last values, which lapse at their resets."""
        now = self.clock.now()
        said = headroom.parse_rate_limit(headers, now)
        if said is not None:
            self.ledger.post(
                {headroom_key(member.name): lambda old: headroom.merge(old, said, now)}
            )

    async def claim_hedge(self) -> bool:
        """May a hedge start now?  Counted against the fleet's budget (SPEC §4.3): the
        hedges of the last 60 s at most 1 + hedge_budget_percent of the requests."""
        now, percent = self.clock.now(), self.config.settings.hedge_budget_percent
        claimed = await self.ledger.decide(
            lb_key(self.config.name), lambda r: policies.claim_hedge(r, now, percent)
        )
        if claimed.decision:
            self.emit(EventKind.HEDGE, None, Outcome.STARTED)
        return claimed.decision

    def hedge_won(self) -> None:
        """The hedge served (``hedgeWins``)."""
        self.ledger.post({lb_key(self.config.name): lambda r: policies.count(r, "hedgeWins")})
        self.emit(EventKind.HEDGE, None, Outcome.WON)

    def hedge_lost(self, member: Member) -> None:
        """An attempt cancelled because the other served first (``hedgesLost``)."""
        self.ledger.post({metrics_key(self.config.name, member.name): stats.record_hedge_lost})
        self.emit(EventKind.HEDGE, member.name, Outcome.LOST)

    def affinity(self, *, hit: bool) -> None:
        """A request with a known conversation: its member came first (a hit), or could
        not (a miss: not admitted, expired, no longer a member)."""
        name = "affinityHits" if hit else "affinityMisses"
        self.ledger.post({lb_key(self.config.name): lambda r: policies.count(r, name)})
        self.emit(EventKind.AFFINITY, None, Outcome.HIT if hit else Outcome.MISS)

    async def probe_released(self, member: Member) -> None:
        """A probe ended saying nothing about health (the caller cancelled)."""
        await self._apply(member, breaker_step=lambda r: brk.on_release(r, probe=True))

    async def served(self, part: Part) -> None:
        """A member served the whole answer (``part.continued``: the end of an interrupted
        one); ``part.usage``: what it was billed for, counted in its tokens and TPM."""
        member, index, ticket, failback = part.member, part.index, part.start.ticket, part.failback
        usage = part.usage or Usage()
        now, policy, failover = self.clock.now(), self.breaker_policy, self._failover

        def lb_step(r: policies.LBRecord) -> policies.LBRecord:
            if failback:
                r = policies.failed_back(r, ticket, now)
            elif failover:
                r = policies.move_sticky(r, index, ticket, now)
            return policies.served(r, member.name, member.litellm_model)

        if part.affinity is not None:  # the conversation stays here; its time to live restarts
            record = AffinityRecord(member.name, now)
            self.ledger.post({part.affinity: lambda _: record})
        await self._apply(
            member,
            metrics_step=lambda m: stats.record_attempt(
                m,
                stats.Outcome.SUCCESS,
                latency_ms=part.latency_ms,
                first_chunk_ms=part.first_chunk_ms,
                tokens=usage.total_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                at=now,
                malformed=part.malformed,
                continued=part.continued,
            ),
            # Only a probe's success changes a breaker; anything else need not wait.
            breaker_step=(
                (lambda r: brk.on_success(r, now, policy, probe=True)) if part.probe else None
            ),
            tokens=usage.total_tokens,
            lb_step=lb_step,
            # Moving the sticky index must be in place before the next request starts.
            wait=failback or (failover and index != part.start.index),
        )
        if failback:
            self.emit(EventKind.FAILBACK, member.name, Outcome.SUCCESS)
        self.emit(
            EventKind.ATTEMPT,
            member.name,
            Outcome.SUCCESS,
            latency_ms=part.latency_ms,
            first_chunk_ms=part.first_chunk_ms,
        )
        self.emit(EventKind.REQUEST, member.name, Outcome.SUCCESS)

    async def broke(self, part: Part, err: BackendError) -> None:
        """The member's stream broke after text reached the caller: its failure (an
        interruption), never replayed.  The request is counted by whoever ends it;
        ``part.usage``, what the member was billed for all the same, counts in its tokens
        and TPM."""
        member, ticket, usage = part.member, part.start.ticket, part.usage
        now, policy, failover = self.clock.now(), self.breaker_policy, self._failover
        following = (part.index + 1) % len(self.config.members)

        def lb_step(r: policies.LBRecord) -> policies.LBRecord:
            return policies.move_sticky(r, following, ticket, now) if failover else r

        await self._apply(
            member,
            metrics_step=lambda m: stats.record_attempt(
                m,
                stats.Outcome.FAILURE,
                latency_ms=part.latency_ms,
                first_chunk_ms=part.first_chunk_ms,
                error=err.reason(),
                at=now,
                malformed=part.malformed,
                interrupted=True,
                tokens=usage.total_tokens if usage else 0,
                cache_read_tokens=usage.cache_read_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
            ),
            breaker_step=lambda r: brk.on_failure(
                r, now, policy, err.retry_after, probe=part.probe
            ),
            tokens=usage.total_tokens if usage else None,
            lb_step=lb_step if failover else None,
            wait=failover,
        )
        self.emit(
            EventKind.ATTEMPT,
            member.name,
            Outcome.INTERRUPTED,
            status=err.status,
            latency_ms=part.latency_ms,
            detail=err.message,
            failure=err.kind.value,
            first_chunk_ms=part.first_chunk_ms,
        )

    async def request_failed(self, ticket: int, *, whole_rotation: bool = True) -> None:
        """Nobody served the request (or its stream broke for good); when a whole failover
        rotation failed, the index goes back to member 0."""
        now, back_to_first = self.clock.now(), self._failover and whole_rotation

        def step(r: policies.LBRecord) -> policies.LBRecord:
            r = policies.served(r, None, None)
            return policies.move_sticky(r, 0, ticket, now) if back_to_first else r

        await self.ledger.aapply({lb_key(self.config.name): step})
        self.emit(EventKind.REQUEST, None, Outcome.FAILURE)

    # -- the one write -------------------------------------------------------------------------

    async def _apply(
        self,
        member: Member,
        *,
        metrics_step: Callable[[stats.MemberMetrics], stats.MemberMetrics] | None = None,
        breaker_step: Callable[[brk.BreakerRecord], brk.BreakerRecord] | None = None,
        tokens: int | None = None,
        lb_step: Callable[[policies.LBRecord], policies.LBRecord] | None = None,
        wait: bool = False,
    ) -> None:
        """Apply the effects of one outcome in one atomic store update.

        Posted (write-behind) unless it changes a breaker or ``wait``: what the next
        request decides on is in place before this returns; counters, metrics and TPM
        tokens follow within milliseconds, and commute with anything awaited."""
        steps: dict[Key[Any], Callable[[Any], Any]] = {}
        if metrics_step is not None:
            steps[metrics_key(self.config.name, member.name)] = metrics_step
        breaker = None
        if breaker_step is not None and self.breaker_policy.enabled:
            breaker = breaker_key(member.name)
            steps[breaker] = breaker_step
        if tokens is not None:
            now, n = self.clock.now(), tokens
            steps[tpm_key(member.name)] = lambda b: window.add_tokens(b, now, n)
        if lb_step is not None:
            steps[lb_key(self.config.name)] = lb_step
        if breaker is not None or wait:
            changes = await self.ledger.aapply(steps)
            if breaker is not None:
                self.emit_changes(member.name, state_changes(changes[breaker]))
        elif steps:
            self.ledger.post(steps)
