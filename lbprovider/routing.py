"""One request over the members (SPEC §3.2): skip, attempt, retry, fail over, stream.

:class:`Router` holds the collaborators (state store, transport, clock, sleep,
event hooks) and runs :meth:`Router.route`, an async generator of chunks.  The
rules themselves live in their modules — order in ``policies``, admission in
``breaker``, the TPM rule in ``window``, classification in ``classify``, retries in
``retry``, the first-chunk deadline in ``timeouts``, counters in ``stats`` — and
every state change is one atomic store update.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbprovider import breaker as brk
from lbprovider import policies, stats, window
from lbprovider.classify import classify
from lbprovider.clock import Clock, Sleep
from lbprovider.errors import (
    BackendError,
    FailureKind,
    FirstChunkTimeoutError,
    MemberFailure,
    NoBackendAvailableError,
    RequestRejectedError,
    StreamInterruptedError,
)
from lbprovider.events import Event, EventHook, EventKind
from lbprovider.profiles import LoadBalancerConfig, Member, Policy
from lbprovider.retry import member_retrying
from lbprovider.state import StateStore, Updater, breaker_key, lb_key, metrics_key, tpm_key
from lbprovider.timeouts import FirstChunkTimeout
from lbprovider.transport import Chunk, TransportSet, Usage

__all__ = ["RequestTrace", "Router"]


@dataclass
class RequestTrace:
    """What happened to one request: filled in as it runs."""

    attempts: int = 0
    failures: list[MemberFailure] = field(default_factory=list)
    backend: str | None = None
    model: str | None = None
    usage: Usage | None = None

    @property
    def failover(self) -> bool:
        """True when some member failed or was skipped before one served."""
        return bool(self.failures)


@dataclass
class _Open:
    """A member that produced its first chunk: the rest of its stream is ours to serve."""

    member: Member
    index: int
    probe: bool
    first: Chunk | None
    rest: FirstChunkTimeout[Chunk]
    started: float  # monotonic
    first_chunk_ms: float


class _BreakerUpdate:
    """A store updater applying a breaker step; remembers state changes for events."""

    def __init__(self, step: Callable[[brk.BreakerRecord], brk.BreakerRecord]) -> None:
        self.step = step
        self.changes: list[str] = []

    def __call__(self, raw: Any) -> Any:
        old = brk.BreakerRecord.from_dict(raw)
        new = self.step(old)
        # Assigned, not appended: a store may run an updater again after a retry.
        self.changes = [new.state.value] if new.state is not old.state else []
        return new.to_dict()


class Router:
    """Routes requests of one load balancer; see the module docstring."""

    def __init__(
        self,
        config: LoadBalancerConfig,
        *,
        store: StateStore,
        transports: TransportSet,
        clock: Clock,
        sleep: Sleep,
        hooks: Sequence[EventHook] = (),
    ) -> None:
        self.config = config
        self.store = store
        self.transports = transports
        self.clock = clock
        self.sleep = sleep
        self.hooks = list(hooks)
        self.breaker_policy = brk.BreakerPolicy.from_settings(config.settings)
        self._secrets = tuple(
            m.api_key.get_secret_value() for m in config.members if m.api_key is not None
        )

    # -- plumbing ------------------------------------------------------------------------

    def _emit(
        self, kind: EventKind, member: str | None = None, outcome: str = "", **fields: Any
    ) -> None:
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
            hook(event)

    def _emit_changes(self, member: str, update: _BreakerUpdate | None) -> None:
        if update is not None:
            for state in update.changes:
                self._emit(EventKind.BREAKER, member, state)

    async def _record(
        self,
        member: Member,
        *,
        metrics_step: Callable[[stats.MemberMetrics], stats.MemberMetrics] | None = None,
        breaker_step: Callable[[brk.BreakerRecord], brk.BreakerRecord] | None = None,
        tokens: int | None = None,
        lb_step: Callable[[policies.LBRecord], policies.LBRecord] | None = None,
    ) -> None:
        """Apply the effects of one event in one atomic store update.

        Counters are posted (write-behind: the request does not wait for them); an
        update that may change a breaker is awaited, so its event can be emitted.
        """
        updates: dict[str, Updater] = {}
        if metrics_step is not None:
            step_m = metrics_step
            updates[metrics_key(self.config.name, member.name)] = lambda raw: step_m(
                stats.MemberMetrics.from_dict(raw)
            ).to_dict()
        breaker_update = None
        if breaker_step is not None and self.breaker_policy.enabled:
            breaker_update = _BreakerUpdate(breaker_step)
            updates[breaker_key(member.name)] = breaker_update
        if tokens is not None:
            now, n = self.clock.now(), tokens
            updates[tpm_key(member.name)] = lambda raw: window.add_tokens(raw, now, n)
        if lb_step is not None:
            step_lb = lb_step
            updates[lb_key(self.config.name)] = lambda raw: step_lb(
                policies.LBRecord.from_dict(raw)
            ).to_dict()
        if breaker_update is not None:
            await self.store.aupdate_many(updates)
            self._emit_changes(member.name, breaker_update)
        elif updates:
            self.store.post_many(updates)

    # -- one request ---------------------------------------------------------------------

    async def route(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], trace: RequestTrace
    ) -> AsyncGenerator[Chunk, None]:
        """Serve one request: yield the chunks of the first member that can serve it."""
        n = len(self.config.members)
        start = await self.start()
        deferred: list[int] = []  # members skipped only by the TPM rule
        opened: _Open | None = None
        for index in policies.candidates(start.index, n):
            opened = await self._consider(index, start.ticket, messages, params, trace, deferred)
            if opened is not None:
                break
        else:
            # The TPM rule never leaves a request with no candidate.
            for index in deferred:
                opened = await self._try_member(index, False, start.ticket, messages, params, trace)
                if opened is not None:
                    break
        if opened is None:
            await self._give_up(start.ticket, trace)
            return
        async for chunk in self._serve(opened, start.ticket, messages, trace):
            yield chunk

    async def start(self) -> policies.Start:
        """Selection, step 1: this request's ticket and start index (one atomic update)."""
        cfg = self.config
        holder: list[policies.Start] = []

        def start_request(raw: Any) -> Any:
            start, rec = policies.begin(
                policies.LBRecord.from_dict(raw), cfg.policy, len(cfg.members)
            )
            holder.append(start)
            return rec.to_dict()

        await self.store.aupdate_many({lb_key(cfg.name): start_request})
        return holder[-1]

    async def admission(self, member: Member) -> tuple[brk.Admission, brk.BreakerRecord, bool]:
        """Selection, step 2: may ``member`` be tried? (breaker admission, TPM rule).

        Returns the admission, the breaker record it was decided on, and whether the
        TPM rule skips the member (never for the half-open probe).
        """
        threshold = self.config.settings.tpm_threshold
        keys = [breaker_key(member.name)] + ([tpm_key(member.name)] if threshold else [])
        raw = await self.store.aget_many(keys)
        admission, rec = await self._admit(member, raw.get(keys[0]))
        tpm_skip = False
        if admission is brk.Admission.ALLOW and threshold:
            tpm = window.current_tpm(raw.get(keys[1]), self.clock.now())
            tpm_skip = window.should_skip(tpm, threshold)
        return admission, rec, tpm_skip

    async def _consider(
        self,
        index: int,
        ticket: int,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        trace: RequestTrace,
        deferred: list[int],
    ) -> _Open | None:
        member = self.config.members[index]
        admission, rec, tpm_skip = await self.admission(member)
        if admission is brk.Admission.SKIP:
            reason = (
                "benched"
                if rec.manual
                else (
                    "probe in flight" if rec.state is brk.BreakerState.HALF_OPEN else "breaker open"
                )
            )
            until = rec.recovery_at
            if rec.state is brk.BreakerState.HALF_OPEN and rec.probe_started_at is not None:
                until = rec.probe_started_at + max(rec.recovery_s, self.breaker_policy.recovery_s)
            await self._skip(member, reason, until, trace)
            return None
        probe = admission is brk.Admission.PROBE
        if tpm_skip:
            deferred.append(index)
            await self._skip(member, "tpm below threshold", None, trace, tpm=True)
            return None
        return await self._try_member(index, probe, ticket, messages, params, trace)

    async def _admit(self, member: Member, raw: Any) -> tuple[brk.Admission, brk.BreakerRecord]:
        key = breaker_key(member.name)
        current = brk.BreakerRecord.from_dict(raw)
        if current.state is brk.BreakerState.CLOSED:
            return brk.Admission.ALLOW, current  # the common case: a read, no write
        now, policy = self.clock.now(), self.breaker_policy
        result: list[tuple[brk.Admission, brk.BreakerRecord]] = []

        def step(rec: brk.BreakerRecord) -> brk.BreakerRecord:
            admission, new = brk.admit(rec, now, policy)
            result.append((admission, rec if admission is brk.Admission.SKIP else new))
            return new

        updater = _BreakerUpdate(step)
        await self.store.aupdate_many({key: updater})
        self._emit_changes(member.name, updater)
        return result[-1]

    async def _skip(
        self,
        member: Member,
        reason: str,
        until: float | None,
        trace: RequestTrace,
        *,
        tpm: bool = False,
    ) -> None:
        await self._record(member, metrics_step=stats.record_skip)
        self._emit(EventKind.SKIP, member.name, "tpm" if tpm else reason)
        text = f"skipped: {reason}"
        if until is not None:
            text += f" until {_clock_text(until)}"
        trace.failures.append(MemberFailure(member.name, text, skipped=True, recovery_at=until))

    async def _try_member(
        self,
        index: int,
        probe: bool,
        ticket: int,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        trace: RequestTrace,
    ) -> _Open | None:
        """Attempt one member up to failover_retry_count times, until its first chunk."""
        member = self.config.members[index]
        settings = self.config.settings
        try:
            async for attempt in member_retrying(settings, self.sleep):
                with attempt:
                    return await self._attempt(member, index, probe, messages, params, trace)
        except asyncio.CancelledError:
            if probe:
                await self._record(member, breaker_step=lambda r: brk.on_release(r, probe=True))
            raise
        except BackendError as err:
            await self._member_failed(member, index, probe, ticket, err, trace)
        return None

    async def _attempt(
        self,
        member: Member,
        index: int,
        probe: bool,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        trace: RequestTrace,
    ) -> _Open:
        transport = self.transports.for_member(member)
        # One-time set-up (litellm's import and client) happens before the first-chunk
        # clock starts, and only for a transport that is used (SPEC §4).
        await transport.warm_up()
        trace.attempts += 1
        number = trace.attempts
        started = self.clock.monotonic()
        stream = FirstChunkTimeout(
            transport.stream(member, messages, params),
            self.config.settings.first_chunk_timeout_s,
            member=member.name,
        )
        try:
            first: Chunk | None = await anext(stream)
        except StopAsyncIteration:
            first = None  # an empty answer is still an answer
        except asyncio.CancelledError:
            await stream.aclose()
            await self._record(
                member,
                metrics_step=lambda m: stats.record_attempt(
                    m, stats.Outcome.CANCELLED, latency_ms=0.0
                ),
            )
            self._emit(EventKind.ATTEMPT, member.name, "cancelled", attempt=number)
            raise
        except Exception as exc:
            await stream.aclose()
            err = classify(
                exc,
                member=member.name,
                settings=self.config.settings,
                secrets=self._secrets,
            )
            latency = (self.clock.monotonic() - started) * 1000
            outcome = (
                stats.Outcome.TIMEOUT
                if isinstance(err, FirstChunkTimeoutError)
                else stats.Outcome.FAILURE
            )
            at = self.clock.now()
            await self._record(
                member,
                metrics_step=lambda m: stats.record_attempt(
                    m, outcome, latency_ms=latency, error=err.reason(), at=at
                ),
            )
            self._emit(
                EventKind.ATTEMPT,
                member.name,
                outcome.value,
                attempt=number,
                status=err.status,
                latency_ms=latency,
                detail=err.message,
            )
            raise err from exc
        first_ms = (self.clock.monotonic() - started) * 1000
        return _Open(member, index, probe, first, stream, started, first_ms)

    async def _member_failed(
        self,
        member: Member,
        index: int,
        probe: bool,
        ticket: int,
        err: BackendError,
        trace: RequestTrace,
    ) -> None:
        """A member's final failure for this request: breaker, sticky index, failover."""
        now, policy = self.clock.now(), self.breaker_policy
        if err.counts_for_breaker:
            breaker_step = lambda r: brk.on_failure(r, now, policy, err.retry_after, probe=probe)  # noqa: E731
        else:
            breaker_step = lambda r: brk.on_release(r, probe=probe)  # noqa: E731
        lb_step = None
        if self.config.policy is Policy.FAILOVER:
            following = (index + 1) % len(self.config.members)
            lb_step = lambda r: policies.move_sticky(r, following, ticket)  # noqa: E731
        await self._record(member, breaker_step=breaker_step, lb_step=lb_step)
        trace.failures.append(
            MemberFailure(member.name, err.reason(), status=err.status, kind=err.kind)
        )
        self._emit(
            EventKind.FAILOVER, member.name, err.kind.value, status=err.status, detail=err.message
        )

    async def _give_up(self, ticket: int, trace: RequestTrace) -> None:
        cfg = self.config

        def step(r: policies.LBRecord) -> policies.LBRecord:
            r = policies.served(r, None, None)
            if cfg.policy is Policy.FAILOVER:
                r = policies.move_sticky(r, 0, ticket)  # a whole rotation failed
            return r

        await self.store.aupdate_many(
            {lb_key(cfg.name): lambda raw: step(policies.LBRecord.from_dict(raw)).to_dict()}
        )
        self._emit(EventKind.REQUEST, None, "failure")
        failures = trace.failures
        now = self.clock.now()
        tried = [f for f in failures if not f.skipped]
        if (
            tried
            and all(f.kind is FailureKind.REQUEST for f in tried)
            and len(tried) == len(failures)
        ):
            raise RequestRejectedError(cfg.name, failures, retryable=False)
        retryable = any(f.skipped or f.kind is not FailureKind.REQUEST for f in failures)
        recovery = None
        if failures and all(f.skipped for f in failures):
            times = [f.recovery_at for f in failures if f.recovery_at is not None]
            recovery = min(times) if times else None
        raise NoBackendAvailableError(
            cfg.name, failures, retryable=retryable, recovery_at=recovery, now=now
        )

    async def _serve(
        self, opened: _Open, ticket: int, messages: Sequence[Mapping[str, Any]], trace: RequestTrace
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the rest of a member's answer; never replay after the first chunk."""
        member = opened.member
        trace.backend, trace.model = member.name, member.litellm_model
        text: list[str] = []
        usage: Usage | None = None
        malformed = 0
        outcome = stats.Outcome.SUCCESS
        error: BackendError | None = None
        try:
            if opened.first is not None:
                usage = opened.first.usage
                malformed = opened.first.malformed
                text.append(opened.first.text)
                yield opened.first
                # After the first chunk nothing is timed: read the source directly.
                async for chunk in opened.rest.source:
                    if chunk.malformed:
                        malformed += chunk.malformed
                        if not (chunk.text or chunk.tool_calls or chunk.finish_reason):
                            continue  # only a count of skipped events: nothing to pass on
                    if chunk.usage is not None:
                        usage = chunk.usage
                    text.append(chunk.text)
                    yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            raise  # the caller stopped: the backend did serve, so it still counts a success
        except Exception as exc:
            outcome = stats.Outcome.FAILURE
            error = classify(
                exc,
                member=member.name,
                settings=self.config.settings,
                secrets=self._secrets,
            )
            raise StreamInterruptedError(
                f"{member.name} failed after the answer had started: {error.message}",
                member=member.name,
                status=error.status,
                kind=error.kind,
            ) from exc
        finally:
            await opened.rest.aclose()
            await self._finish(
                opened, ticket, messages, trace, outcome, error, usage, "".join(text), malformed
            )

    async def _finish(
        self,
        opened: _Open,
        ticket: int,
        messages: Sequence[Mapping[str, Any]],
        trace: RequestTrace,
        outcome: stats.Outcome,
        error: BackendError | None,
        usage: Usage | None,
        text: str,
        malformed: int,
    ) -> None:
        member, now, policy = opened.member, self.clock.now(), self.breaker_policy
        latency = (self.clock.monotonic() - opened.started) * 1000
        if outcome is stats.Outcome.SUCCESS:
            tokens = usage.total_tokens if usage else window.estimate_tokens(messages, text)
            trace.usage = usage or Usage(completion_tokens=tokens)
            cfg = self.config

            def lb_step(r: policies.LBRecord) -> policies.LBRecord:
                if cfg.policy is Policy.FAILOVER:
                    r = policies.move_sticky(r, opened.index, ticket)
                return policies.served(r, member.name, member.litellm_model)

            await self._record(
                member,
                metrics_step=lambda m: stats.record_attempt(
                    m,
                    outcome,
                    latency_ms=latency,
                    first_chunk_ms=opened.first_chunk_ms,
                    tokens=tokens,
                    malformed=malformed,
                ),
                # Only a probe's success changes a breaker; anything else need not wait.
                breaker_step=(lambda r: brk.on_success(r, now, policy, probe=True))
                if opened.probe
                else None,
                tokens=tokens,
                lb_step=lb_step,
            )
            self._emit(EventKind.ATTEMPT, member.name, "success", latency_ms=latency)
            self._emit(EventKind.REQUEST, member.name, "success")
            return
        assert error is not None
        following = (opened.index + 1) % len(self.config.members)
        sticky_policy = self.config.policy is Policy.FAILOVER

        def lb_fail(r: policies.LBRecord) -> policies.LBRecord:
            if sticky_policy:
                r = policies.move_sticky(r, following, ticket)
            return policies.served(r, None, None)

        await self._record(
            member,
            metrics_step=lambda m: stats.record_attempt(
                m,
                outcome,
                latency_ms=latency,
                first_chunk_ms=opened.first_chunk_ms,
                error=error.reason(),
                at=now,
                malformed=malformed,
            ),
            breaker_step=lambda r: brk.on_failure(
                r, now, policy, error.retry_after, probe=opened.probe
            ),
            lb_step=lb_fail,
        )
        self._emit(
            EventKind.ATTEMPT,
            member.name,
            "failure",
            status=error.status,
            latency_ms=latency,
            detail=error.message,
        )
        self._emit(EventKind.REQUEST, member.name, "failure")


def _clock_text(epoch: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(epoch, tz=_dt.UTC).strftime("%H:%M:%S UTC")
