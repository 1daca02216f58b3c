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
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from lbprovider import breaker as brk
from lbprovider import policies, window
from lbprovider.affinity import AffinityRecord, conversation
from lbprovider.classify import classify
from lbprovider.clock import Clock, Sleep
from lbprovider.config import Continuation, LoadBalancerConfig, Member
from lbprovider.errors import (
    BackendError,
    FailureKind,
    FirstChunkTimeoutError,
    MemberFailure,
    NoBackendAvailableError,
    RequestRejectedError,
    StreamInterruptedError,
)
from lbprovider.events import EventHook, Outcome
from lbprovider.ledger import Key, Ledger, affinity_key, breaker_key, lb_key
from lbprovider.messages import check_messages
from lbprovider.recorder import Part, Recorder
from lbprovider.retry import RetryPolicy
from lbprovider.selection import (
    OPEN_REASON,
    Admitted,
    Candidate,
    Known,
    Plan,
    Selection,
    keep_probe,
    state_changes,
)
from lbprovider.state import StateStore
from lbprovider.timeouts import FirstChunkTimeout, IdleTimeout, aclose_quietly
from lbprovider.transport import Chunk, TransportSet, Usage, Wire, member_secrets

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
    # A streaming caller sees chunks as they come; a non-streaming one gets one whole
    # answer, so an interrupted stream can still fail over (SPEC §3.4).
    streaming: bool = True
    plan: Plan | None = None
    # Admission records read with the start; good until the first attempt takes time.
    known: Known | None = None
    # The client's own request, for a member that speaks its API (SPEC §4.2 pass-through).
    wire: Wire | None = None
    # Its conversation (SPEC §3.5), and the member that conversation names, if any.
    conversation: Key[AffinityRecord] | None = None
    affine: int | None = None
    prompt_tokens: int = 0  # estimated, for the headroom rule (SPEC §3.6)
    # Members skipped only because their breaker is open, by index: a panic probe's pick.
    open_skips: dict[int, float] = field(default_factory=dict)  # index -> recovery time
    panicked: bool = False  # a panic probe failed: the callers' wait is still the breakers'
    hedged: bool = False  # a hedge was considered (one per request, SPEC §4.3)


@dataclass
class _Open:
    """A member that produced its first chunk: the rest of its stream is ours to serve."""

    candidate: Candidate
    member: Member
    first: Chunk | None
    rest: FirstChunkTimeout[Chunk]
    started: float  # monotonic
    first_chunk_ms: float
    buffered: list[Chunk] | None = None  # a non-streaming caller's answer, read whole
    continued: bool = False  # this member continues an interrupted answer


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
        self.ledger = Ledger(store)
        self.transports = transports
        self.clock = clock
        self.sleep = sleep
        self.breaker_policy = brk.BreakerPolicy.from_settings(config.settings)
        self.retry = RetryPolicy.from_settings(config.settings, rng)
        self.selection = Selection(
            config,
            ledger=self.ledger,
            clock=clock,
            breaker_policy=self.breaker_policy,
            retry=self.retry,
        )
        self.recorder = Recorder(
            config, ledger=self.ledger, clock=clock, breaker_policy=self.breaker_policy, hooks=hooks
        )
        self._secrets = tuple(s for m in config.members for s in member_secrets(m))

    # -- one request ---------------------------------------------------------------------

    async def route(
        self,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        trace: RequestTrace,
        *,
        streaming: bool = True,
        wire: Wire | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Serve one request: yield the chunks of the first member that can serve it.

        ``streaming`` False: the caller shows nothing before the end, so each answer is
        read whole before its first chunk is yielded, and a stream that breaks fails over.
        ``wire``: the client's own request, passed through to members that speak its API.
        """
        check_messages(messages)  # a caller's error is refused before any member is asked
        explicit = params.get("affinity_key")
        prompt_tokens = window.estimate_tokens(messages, "")
        chat = conversation(
            self.config, messages, explicit if isinstance(explicit, str) else None, prompt_tokens
        )
        key = affinity_key(self.config.name, chat.key) if chat is not None else None
        start, known = await self.selection.start([key] if key and chat and chat.follows else [])
        req = Request(
            messages, params, trace, start=start, known=known, streaming=streaming, wire=wire
        )
        req.conversation, req.prompt_tokens = key, prompt_tokens
        if chat is not None and key is not None and key in known:
            record: AffinityRecord = known[key]
            req.affine = chat.member_index(record, self.config, self.clock.now())
            if record.member is not None and req.affine is None:
                self.recorder.affinity(hit=False)  # expired, or no longer a member
        try:
            opened = await self._first_chunk(req)
        except BaseException:
            await self._release_probes(req)
            raise
        if opened is None and self._all_open(req):
            opened = await self._panic(req)
        if opened is None:
            await self._give_up(req)
        async for chunk in self._serve(req, opened):
            yield chunk

    async def _first_chunk(self, req: Request) -> _Open | None:
        """Walk the plan until a member produces its first chunk (None: nobody did)."""
        plan = req.plan = self.selection.plan(req.start, req.affine)
        hedge_s = self.config.settings.hedge_after_ms / 1000
        while (cand := plan.next()) is not None:
            member = self.config.members[cand.index]
            if cand.first and not await self._admit(req, cand, member, plan):
                continue
            delay = cand.not_before - self.clock.monotonic()
            if delay > 0:
                await self.sleep(delay)
            req.pending.pop(cand.index, None)
            req.known = None
            if hedge_s and not req.hedged:
                opened = await self._hedged(req, plan, cand, member, hedge_s)
            else:
                opened = await self._one(req, plan, cand, member)
            if opened is not None:
                plan.succeeded(opened.candidate)
                await self._settle_pending(req)
                return opened
        return None

    async def _one(self, req: Request, plan: Plan, cand: Candidate, member: Member) -> _Open | None:
        """One attempt; a failure is handed to the plan (None)."""
        try:
            return await self._attempt(req, cand, member)
        except BackendError as err:
            await self._failed(req, plan, cand, err)
            return None

    async def _failed(self, req: Request, plan: Plan, cand: Candidate, err: BackendError) -> None:
        """An attempt failed before serving: the plan says whether the member is done for
        this request; a content-policy refusal ends the request."""
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

    async def _hedged(
        self, req: Request, plan: Plan, cand: Candidate, member: Member, after_s: float
    ) -> _Open | None:
        """An attempt that, with no first chunk after ``after_s``, gets the next admitted
        candidate started alongside, within the fleet's hedge budget (SPEC §4.3).  The
        first to produce a chunk serves; the other is cancelled (not a failure).  Each
        keeps its own first-chunk timeout; a failed one leaves the other running."""
        running: dict[asyncio.Task[_Open], Candidate] = {
            asyncio.create_task(self._attempt(req, cand, member)): cand
        }
        fired = asyncio.Event()
        timer = self.clock.call_later(after_s, fired.set)
        waiter = asyncio.create_task(fired.wait())
        try:
            await asyncio.wait({*running, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            waiter.cancel()
        if not any(task.done() for task in running):
            hedge = await self._start_hedge(req, plan)
            if hedge is not None:
                running[hedge[0]] = hedge[1]
        try:
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    finished = running.pop(task)
                    error = task.exception()
                    if error is None:
                        await self._drop_losers(req, running, lost=True)
                        if finished is not cand:
                            self.recorder.hedge_won()
                        return task.result()
                    if not isinstance(error, BackendError):
                        raise error
                    await self._failed(req, plan, finished, error)
            return None
        finally:
            await self._drop_losers(req, running, lost=False)  # the caller left, or a bug

    async def _start_hedge(
        self, req: Request, plan: Plan
    ) -> tuple[asyncio.Task[_Open], Candidate] | None:
        """The hedge: the plan's next candidate the breakers admit, if the budget allows."""
        req.hedged = True  # one hedge per request, started or not
        while (cand := plan.next()) is not None:
            if not cand.first:
                plan.give_back(cand)  # a retry of a member already asked: no hedge
                return None
            member = self.config.members[cand.index]
            if not await self._admit(req, cand, member, plan):
                continue
            if not await self.recorder.claim_hedge():
                plan.give_back(cand)
                if await self._drop_probe(req, cand.index):
                    await self.recorder.probe_released(member)
                return None
            return asyncio.create_task(self._attempt(req, cand, member)), cand
        return None

    async def _drop_losers(
        self, req: Request, running: dict[asyncio.Task[_Open], Candidate], *, lost: bool
    ) -> None:
        """Cancel the attempts still running: the caller's cancel for each (counted as
        cancelled, never a failure), and, when another served (``lost``), ``hedgesLost``
        for its member."""
        for task, cand in list(running.items()):
            running.pop(task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BackendError):
                await task
            member = self.config.members[cand.index]
            if await self._drop_probe(req, cand.index):
                await self.recorder.probe_released(member)
            if lost:
                self.recorder.hedge_lost(member)

    async def _admit(self, req: Request, cand: Candidate, member: Member, plan: Plan) -> bool:
        """Ask the member's breaker (and the TPM rule) once per request; False: skipped."""
        admitted = await self.selection.admit(
            member,
            tpm=not (cand.deferred or cand.failback),
            known=req.known,
            prompt_tokens=req.prompt_tokens,
        )
        self.recorder.emit_changes(member.name, admitted.changes)
        if req.affine is not None and cand.index == req.affine and not cand.deferred:
            # SPEC §3.5: a hit when the conversation's member takes the first attempt
            # (even if that attempt then fails), a miss when it could not come first.
            self.recorder.affinity(hit=not admitted.skipped)
            req.affine = None
        if admitted.skipped:
            await self._skip(req, member, admitted)
            if admitted.deferred and not cand.deferred:  # tried last, once
                plan.defer(cand)
            if cand.failback:
                await self.selection.unclaim_failback(req.start)
            return False
        if admitted.probe_id is not None:
            req.probes[cand.index] = asyncio.create_task(
                keep_probe(self.ledger, member.name, admitted.probe_id, self.clock)
            )
        return True

    async def _skip(self, req: Request, member: Member, admitted: Admitted) -> None:
        reason, until = admitted.skip_reason(self.breaker_policy)
        if reason == OPEN_REASON and until is not None:
            req.open_skips[self.config.member_names.index(member.name)] = until
        await self.recorder.skipped(member, reason)
        text = f"skipped: {SKIP_TEXT.get(reason, reason)}"
        if until is not None:
            text += f" until {_clock_text(until)}"
        req.trace.failures.append(MemberFailure(member.name, text, skipped=True, recovery_at=until))

    async def _attempt(
        self,
        req: Request,
        cand: Candidate,
        member: Member,
        messages: Sequence[Mapping[str, Any]] | None = None,
    ) -> _Open:
        """One call to one member, up to its first chunk (for a non-streaming caller, to
        its last); a failure is classified and recorded."""
        transport = self.transports.for_member(member)
        # One-time set-up (litellm's import and client) happens before the first-chunk
        # clock starts, and only for a transport that is used (SPEC §4).
        await transport.warm_up()
        req.trace.attempts += 1
        number = req.trace.attempts
        started = self.clock.monotonic()
        # A continuation's messages are the engine's own: never the client's wire request.
        wire = None if messages is not None else req.wire
        stream = FirstChunkTimeout(
            transport.stream(member, messages or req.messages, req.params, wire),
            self.config.settings.first_chunk_timeout_s,
            member=member.name,
            clock=self.clock,
        )
        first: Chunk | None = None
        try:
            with contextlib.suppress(StopAsyncIteration):  # an empty answer is still one
                first = await anext(stream)
            first_ms = (self.clock.monotonic() - started) * 1000
            if first is not None and first.limits:
                self.recorder.headroom(member, first.limits)
            buffered = None if req.streaming else await self._read_whole(first, stream, member)
        except asyncio.CancelledError:
            await stream.aclose()
            await self.recorder.attempt_cancelled(member, number)
            raise
        except Exception as exc:
            await stream.aclose()
            err = self._classify(exc, member, interrupted=first is not None)
            if err.limits:
                self.recorder.headroom(member, err.limits)
            latency = (self.clock.monotonic() - started) * 1000
            timed_out = isinstance(err, FirstChunkTimeoutError)
            await self.recorder.attempt_failed(member, number, err, latency, timed_out=timed_out)
            raise err from exc
        return _Open(cand, member, first, stream, started, first_ms, buffered)

    async def _read_whole(
        self, first: Chunk | None, stream: FirstChunkTimeout[Chunk], member: Member
    ) -> list[Chunk]:
        """The rest of an answer, for a caller who sees nothing before the end."""
        chunks = [] if first is None else [first]
        if first is not None:
            rest = self._timed_rest(stream, member)
            try:
                chunks.extend([chunk async for chunk in rest])
            finally:
                await aclose_quietly(rest)
        return chunks

    def _timed_rest(self, stream: FirstChunkTimeout[Chunk], member: Member) -> AsyncIterator[Chunk]:
        """After the first chunk: the source itself, under the idle timeout when set."""
        idle = self.config.settings.stream_idle_timeout_s
        if not idle:
            return stream.source
        return IdleTimeout(stream.source, idle, member=member.name, clock=self.clock)

    def _classify(self, exc: BaseException, member: Member, *, interrupted: bool) -> BackendError:
        err = classify(
            exc, member=member.name, settings=self.config.settings, secrets=self._secrets
        )
        err.interrupted = err.interrupted or interrupted
        return err

    # -- failures ------------------------------------------------------------------------

    async def _member_failed(self, req: Request, cand: Candidate, err: BackendError) -> None:
        """A member's final failure for this request: recorded, and listed in the trace."""
        member = self.config.members[cand.index]
        part = Part(
            member,
            cand.index,
            req.start,
            probe=await self._drop_probe(req, cand.index),
            failback=cand.failback,
        )
        await self.recorder.member_failed(part, err, open_now=self.retry.too_long(err))
        req.trace.failures.append(
            MemberFailure(
                member.name,
                err.reason(),
                status=err.status,
                kind=err.kind,
                retry_after=err.retry_after,
            )
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

    def _all_open(self, req: Request) -> bool:
        """Was every member skipped only because its breaker is open (SPEC §3.3)?"""
        failures = req.trace.failures
        return (
            self.config.settings.panic_probe_enabled
            and self.breaker_policy.enabled
            and bool(failures)
            and all(f.skipped for f in failures)
            and len(req.open_skips) == len(self.config.members)
        )

    async def _panic(self, req: Request) -> _Open | None:
        """Every breaker is open: probe the member that recovers first, once per load
        balancer across the fleet (SPEC §3.3).  Its success closes its breaker and serves;
        its failure is a failed probe (the recovery doubles), and the request fails."""
        index = min(req.open_skips, key=lambda i: req.open_skips[i])
        member = self.config.members[index]
        probe_id = secrets.token_hex(8)
        now = self.clock.now()
        lb = lb_key(self.config.name)
        claim = await self.ledger.decide(
            lb, lambda r: policies.claim_panic(r, now, probe_id, brk.PROBE_LEASE_S)
        )
        if not claim.decision:
            return None  # another request's panic probe is in flight: fail at once
        try:
            taken = await self.ledger.decide(
                breaker_key(member.name), lambda r: brk.panic_probe(r, now, probe_id)
            )
            if not taken.decision:
                return None
            self.recorder.emit_changes(member.name, state_changes(taken.change))
            req.probes[index] = asyncio.create_task(
                keep_probe(self.ledger, member.name, probe_id, self.clock)
            )
            cand = Candidate(index, first=False)
            try:
                opened = await self._attempt(req, cand, member)
            except BackendError as err:
                await self._member_failed(req, cand, err)
                req.panicked = True
                return None
            return opened
        finally:
            await self.ledger.aapply({lb: lambda r: policies.release_panic(r, probe_id)})

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
        if req.panicked:
            recovery = min(req.open_skips.values())
        elif failures and all(f.skipped for f in failures):
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
        """Stream a member's answer; never replay after the first chunk.  An interruption
        continues on the next admitted member that can continue a partial answer, or
        reaches the caller as :class:`StreamInterruptedError` (SPEC §3.4)."""
        delivered: list[str] = []  # every text that reached the caller
        tool_call = False
        while True:
            member, segment = opened.member, len(delivered)
            req.trace.backend, req.trace.model = member.name, member.litellm_model
            usage: Usage | None = None
            malformed = 0
            error: BackendError | None = None
            # What earlier members of a continued answer were billed for: the caller's
            # usage is the sum (SPEC v3 §11.3), this member's own counts in its stats.
            before = req.trace.usage
            rest = self._rest_of(opened)
            try:
                if opened.first is not None:
                    first = opened.first
                    usage, malformed = first.usage, first.malformed
                    tool_call = tool_call or bool(first.tool_calls)
                    delivered.append(first.text)
                    yield _with_billed(first, before)
                    async for chunk in rest:
                        if chunk.malformed:
                            malformed += chunk.malformed
                            if not (chunk.text or chunk.tool_calls or chunk.finish_reason):
                                continue  # only a count of skipped events: nothing to pass on
                        if chunk.usage is not None:
                            usage = chunk.usage
                        if chunk.tool_calls:
                            tool_call = True
                        delivered.append(chunk.text)
                        yield _with_billed(chunk, before)
            except (asyncio.CancelledError, GeneratorExit):
                raise  # the caller stopped: the backend did serve, so it still counts a success
            except Exception as exc:
                error = self._classify(exc, member, interrupted=True)
            finally:
                await aclose_quietly(rest)
                await opened.rest.aclose()
                await self._answered(
                    req, opened, usage, "".join(delivered[segment:]), malformed, error
                )
            if error is None:
                return
            following = None if tool_call else await self._continuation(req, "".join(delivered))
            if following is None:
                await self.recorder.request_failed(req.start.ticket, whole_rotation=False)
                raise StreamInterruptedError(error)
            opened = following

    def _rest_of(self, opened: _Open) -> AsyncIterator[Chunk]:
        if opened.buffered is not None:
            return _replay(opened.buffered[1:])
        return self._timed_rest(opened.rest, opened.member)

    async def _answered(
        self,
        req: Request,
        opened: _Open,
        usage: Usage | None,
        text: str,
        malformed: int,
        error: BackendError | None,
    ) -> None:
        """Record how one member's part of the answer ended: served, or broken."""
        member, cand = opened.member, opened.candidate
        probe = await self._drop_probe(req, cand.index)
        latency = (self.clock.monotonic() - opened.started) * 1000
        # What this member was billed for, counted in its tokens and TPM; an answer that
        # several members produced reports the sum (SPEC v3 §11.3). A broken stream
        # rarely carried its usage (it comes last): estimated from what was sent and read.
        billed = usage or Usage(completion_tokens=window.estimate_tokens(req.messages, text))
        previous = req.trace.usage
        req.trace.usage = billed if previous is None else previous + billed
        part = Part(
            member,
            cand.index,
            req.start,
            probe=probe,
            failback=cand.failback,
            affinity=req.conversation,
            continued=opened.continued,
            latency_ms=latency,
            first_chunk_ms=opened.first_chunk_ms,
            usage=billed,
            malformed=malformed,
        )
        if error is not None:
            await self.recorder.broke(part, error)
            req.trace.failures.append(
                MemberFailure(member.name, error.reason(), status=error.status, kind=error.kind)
            )
            return
        await self.recorder.served(part)

    async def _continuation(self, req: Request, delivered: str) -> _Open | None:
        """After an interruption: the next admitted member, if it declares
        ``continuation: prefill``, continues from the text delivered so far; any failure
        of it (a refusal included) means no continuation."""
        assert req.plan is not None
        plan = req.plan
        while (cand := plan.next()) is not None:
            if not cand.first:
                continue  # only members this request has not asked yet
            member = self.config.members[cand.index]
            if not await self._admit(req, cand, member, plan):
                continue
            if member.continuation != Continuation.PREFILL:
                if await self._drop_probe(req, cand.index):
                    await self.recorder.probe_released(member)
                return None
            messages = [*req.messages, {"role": "assistant", "content": delivered}]
            try:
                opened = await self._attempt(req, cand, member, messages)
            except BackendError as err:
                plan.failed(cand, err, self.clock.monotonic())
                await self._member_failed(req, cand, err)
                return None
            plan.succeeded(cand)
            opened.continued = True
            return opened
        return None


def _with_billed(chunk: Chunk, before: Usage | None) -> Chunk:
    """``chunk`` with its usage counting what earlier members were billed for."""
    if before is None or chunk.usage is None:
        return chunk
    return replace(chunk, usage=before + chunk.usage)


async def _replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    """Chunks already read, as a stream."""
    for chunk in chunks:
        yield chunk


# The exhausted-everything message's words for the skips whose outcome is terse.
SKIP_TEXT = {Outcome.TPM: "tpm below threshold", Outcome.HEADROOM: "no rate-limit headroom"}


def _clock_text(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%H:%M:%S UTC")
