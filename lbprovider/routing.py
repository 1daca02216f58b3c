"""One request over the members (SPEC §3): attempt, fail over, stream, record.

:class:`Router` composes: :class:`~lbprovider.selection.Selection` decides who may be
tried and in which order (start, admission, the plan of passes and retries), a
transport makes each attempt (first chunk under the first-chunk timeout), ``classify``
says what a failure means, and :class:`~lbprovider.recorder.Recorder` writes the effects
(metrics, breaker, TPM, routing record: one atomic store update each) and emits events.
One request's facts travel in one :class:`Request`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from lbprovider import breaker as brk
from lbprovider import policies, window
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
from lbprovider.events import EventHook
from lbprovider.profiles import LoadBalancerConfig, Member
from lbprovider.recorder import Recorder
from lbprovider.retry import RetryPolicy
from lbprovider.selection import Admitted, Candidate, Plan, Selection
from lbprovider.state import StateStore
from lbprovider.timeouts import FirstChunkTimeout
from lbprovider.transport import Chunk, TransportSet, Usage

__all__ = ["Request", "RequestTrace", "Router"]


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
class Request:
    """One request's context: what was asked, where it started, what it holds."""

    messages: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any]
    trace: RequestTrace
    start: policies.Start = field(default_factory=lambda: policies.Start(0, 0))
    # Half-open probes this request holds, by member index: the task renewing each lease.
    probes: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    # Round-robin failures whose member waits for a later pass: final once that is known.
    pending: dict[int, tuple[Candidate, BackendError]] = field(default_factory=dict)


@dataclass
class _Open:
    """A member that produced its first chunk: the rest of its stream is ours to serve."""

    candidate: Candidate
    member: Member
    first: Chunk | None
    rest: FirstChunkTimeout[Chunk]
    started: float  # monotonic
    first_chunk_ms: float


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
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.transports = transports
        self.clock = clock
        self.sleep = sleep
        self.breaker_policy = brk.BreakerPolicy.from_settings(config.settings)
        self.retry = RetryPolicy.from_settings(config.settings, rng)
        self.selection = Selection(
            config, store=store, clock=clock, breaker_policy=self.breaker_policy, retry=self.retry
        )
        self.recorder = Recorder(
            config, store=store, clock=clock, breaker_policy=self.breaker_policy, hooks=hooks
        )
        self._secrets = tuple(
            m.api_key.get_secret_value() for m in config.members if m.api_key is not None
        )

    # -- one request ---------------------------------------------------------------------

    async def route(
        self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any], trace: RequestTrace
    ) -> AsyncGenerator[Chunk, None]:
        """Serve one request: yield the chunks of the first member that can serve it."""
        req = Request(messages, params, trace, start=await self.selection.start())
        try:
            opened = await self._first_chunk(req)
        except BaseException:
            await self._release_probes(req)
            raise
        if opened is None:
            await self._give_up(req)
        async for chunk in self._serve(req, opened):
            yield chunk

    async def _first_chunk(self, req: Request) -> _Open | None:
        """Walk the plan until a member produces its first chunk (None: nobody did)."""
        plan = self.selection.plan(req.start)
        while (cand := plan.next()) is not None:
            member = self.config.members[cand.index]
            if cand.first and not await self._admit(req, cand, member, plan):
                continue
            delay = cand.not_before - self.clock.monotonic()
            if delay > 0:
                await self.sleep(delay)
            req.pending.pop(cand.index, None)
            try:
                opened = await self._attempt(req, cand, member)
            except BackendError as err:
                if plan.failed(cand, err, self.clock.monotonic()):
                    await self._member_failed(req, cand, err)
                else:
                    req.pending[cand.index] = (cand, err)
                if err.kind is FailureKind.FINAL:
                    await self._settle_pending(req)
                    await self.recorder.request_failed(req.start.ticket)
                    raise RequestRejectedError(
                        self.config.name, req.trace.failures, retryable=False
                    ) from err
                continue
            plan.succeeded(cand)
            await self._settle_pending(req)
            return opened
        return None

    async def _admit(self, req: Request, cand: Candidate, member: Member, plan: Plan) -> bool:
        """Ask the member's breaker (and the TPM rule) once per request; False: skipped."""
        admitted = await self.selection.admit(member, tpm=not (cand.deferred or cand.failback))
        self.recorder.emit_changes(member.name, admitted.changes)
        if admitted.skipped:
            await self._skip(req, member, admitted)
            if admitted.tpm_skip:
                plan.defer(cand)
            if cand.failback:
                await self.selection.unclaim_failback(req.start)
            return False
        if admitted.probe_id is not None:
            req.probes[cand.index] = asyncio.create_task(
                brk.keep_probe(self.store, member.name, admitted.probe_id, self.clock)
            )
        return True

    async def _skip(self, req: Request, member: Member, admitted: Admitted) -> None:
        reason, until = admitted.skip_reason(self.breaker_policy)
        await self.recorder.skipped(member, "tpm" if admitted.tpm_skip else reason)
        text = f"skipped: {reason}"
        if until is not None:
            text += f" until {_clock_text(until)}"
        req.trace.failures.append(MemberFailure(member.name, text, skipped=True, recovery_at=until))

    async def _attempt(self, req: Request, cand: Candidate, member: Member) -> _Open:
        """One call to one member, up to its first chunk; a failure is classified."""
        transport = self.transports.for_member(member)
        # One-time set-up (litellm's import and client) happens before the first-chunk
        # clock starts, and only for a transport that is used (SPEC §4).
        await transport.warm_up()
        req.trace.attempts += 1
        number = req.trace.attempts
        started = self.clock.monotonic()
        stream = FirstChunkTimeout(
            transport.stream(member, req.messages, req.params),
            self.config.settings.first_chunk_timeout_s,
            member=member.name,
        )
        try:
            first: Chunk | None = await anext(stream)
        except StopAsyncIteration:
            first = None  # an empty answer is still an answer
        except asyncio.CancelledError:
            await stream.aclose()
            await self.recorder.attempt_cancelled(member, number)
            raise
        except Exception as exc:
            await stream.aclose()
            err = classify(
                exc, member=member.name, settings=self.config.settings, secrets=self._secrets
            )
            latency = (self.clock.monotonic() - started) * 1000
            timed_out = isinstance(err, FirstChunkTimeoutError)
            await self.recorder.attempt_failed(member, number, err, latency, timed_out=timed_out)
            raise err from exc
        first_ms = (self.clock.monotonic() - started) * 1000
        return _Open(cand, member, first, stream, started, first_ms)

    # -- failures ------------------------------------------------------------------------

    async def _member_failed(self, req: Request, cand: Candidate, err: BackendError) -> None:
        """A member's final failure for this request: recorded, and listed in the trace."""
        member = self.config.members[cand.index]
        await self.recorder.member_failed(
            member,
            cand.index,
            err,
            ticket=req.start.ticket,
            probe=await self._drop_probe(req, cand.index),
            failback=cand.failback,
            open_now=self.retry.too_long(err),
        )
        req.trace.failures.append(
            MemberFailure(member.name, err.reason(), status=err.status, kind=err.kind)
        )

    async def _settle_pending(self, req: Request) -> None:
        """The request is decided: waiting round-robin failures are final now."""
        while req.pending:
            _, (cand, err) = req.pending.popitem()
            await self._member_failed(req, cand, err)

    async def _drop_probe(self, req: Request, index: int) -> bool:
        """Stop renewing ``index``'s probe lease; True if this request held the probe."""
        keeper = req.probes.pop(index, None)
        if keeper is None:
            return False
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        return True

    async def _release_probes(self, req: Request) -> None:
        """Cancelled (or broken) before any member served: free every probe slot held."""
        for index in list(req.probes):
            await self._drop_probe(req, index)
            await self.recorder.probe_released(self.config.members[index])

    async def _give_up(self, req: Request) -> NoReturn:
        """Nothing could serve: one error listing every member with its reason."""
        await self._settle_pending(req)
        await self.recorder.request_failed(req.start.ticket)
        failures = req.trace.failures
        tried = [f for f in failures if not f.skipped]
        if (
            tried
            and all(f.kind is FailureKind.REQUEST for f in tried)
            and len(tried) == len(failures)
        ):
            raise RequestRejectedError(self.config.name, failures, retryable=False)
        retryable = any(f.skipped or f.kind is not FailureKind.REQUEST for f in failures)
        recovery = None
        if failures and all(f.skipped for f in failures):
            times = [f.recovery_at for f in failures if f.recovery_at is not None]
            recovery = min(times) if times else None
        raise NoBackendAvailableError(
            self.config.name,
            failures,
            retryable=retryable,
            recovery_at=recovery,
            now=self.clock.now(),
        )

    # -- serving -------------------------------------------------------------------------

    async def _serve(self, req: Request, opened: _Open) -> AsyncGenerator[Chunk, None]:
        """Stream the rest of a member's answer; never replay after the first chunk."""
        member = opened.member
        req.trace.backend, req.trace.model = member.name, member.litellm_model
        text: list[str] = []
        usage: Usage | None = None
        malformed = 0
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
            error = classify(
                exc, member=member.name, settings=self.config.settings, secrets=self._secrets
            )
            raise StreamInterruptedError(
                f"{member.name} failed after the answer had started: {error.message}",
                member=member.name,
                status=error.status,
                kind=error.kind,
            ) from exc
        finally:
            await opened.rest.aclose()
            cand = opened.candidate
            probe = await self._drop_probe(req, cand.index)
            latency = (self.clock.monotonic() - opened.started) * 1000
            if error is None:
                tokens = (
                    usage.total_tokens
                    if usage
                    else window.estimate_tokens(req.messages, "".join(text))
                )
                req.trace.usage = usage or Usage(completion_tokens=tokens)
                await self.recorder.served(
                    member,
                    cand.index,
                    ticket=req.start.ticket,
                    probe=probe,
                    failback=cand.failback,
                    latency_ms=latency,
                    first_chunk_ms=opened.first_chunk_ms,
                    tokens=tokens,
                    malformed=malformed,
                )
            else:
                await self.recorder.broke(
                    member,
                    cand.index,
                    error,
                    ticket=req.start.ticket,
                    probe=probe,
                    latency_ms=latency,
                    first_chunk_ms=opened.first_chunk_ms,
                    malformed=malformed,
                )


def _clock_text(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%H:%M:%S UTC")
