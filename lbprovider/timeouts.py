"""The stream's two timeouts, as wrappers around any async iterator.

:class:`FirstChunkTimeout` (SPEC §4) times only the first item.  On expiry the source is
closed (so an HTTP stream releases its connection and the backend sees the disconnect)
and :class:`FirstChunkTimeoutError` is raised.

:class:`IdleTimeout` (SPEC §3.4) bounds every later gap: no item for ``idle_s`` while
the consumer waits for one interrupts the stream (:class:`StreamIdleTimeoutError`), and
the source is closed.  A slow but live stream is never cut, and time the consumer spends
on a chunk is not counted.  It keeps one timer per idle period, not one per chunk: an
answer has hundreds of chunks, and a timer per chunk would be most of the engine's cost
per chunk.

Both run on the injected :class:`~lbprovider.clock.Clock` (its ``ticks()`` and
``call_later()``), so a test's clock can move them like every other time the engine
reads (:class:`lbprovider.testing.FakeClock` with ``timers=True``).
On expiry they cancel the waiting task the way ``asyncio.timeout`` does, and tell their
own cancel from the caller's with ``Task.uncancel``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from lbprovider.clock import Clock, SystemClock, Timer
from lbprovider.errors import FirstChunkTimeoutError, StreamIdleTimeoutError

__all__ = ["FirstChunkTimeout", "IdleTimeout", "aclose_quietly"]

T = TypeVar("T")


async def aclose_quietly(it: AsyncIterator[object]) -> None:
    """Close an async iterator if it can be closed."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class _Watch:
    """Cancels the task waiting for an item once a wait has lasted ``limit_s``.

    ``arm`` at the start of each wait, ``disarm`` at its end.  The timer is re-armed
    lazily: one that fires early (the wait it was armed for ended) looks again at the
    current wait's start, so a stream of many items costs one timer per quiet period.
    """

    __slots__ = ("_cancelling", "_clock", "_limit", "_since", "_task", "_timer", "expired")

    def __init__(self, clock: Clock, limit_s: float) -> None:
        self._clock = clock
        self._limit = limit_s
        self._timer: Timer | None = None
        self._since: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.expired = False

    def arm(self) -> None:
        task = self._task = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()
        self._since = self._clock.ticks()
        if self._timer is None:
            self._timer = self._clock.call_later(self._limit, self._check)

    def disarm(self) -> None:
        self._since = None

    def ours(self) -> bool:
        """After a CancelledError in the wait: was it this watch's (not the caller's)?"""
        return self.expired and self._task is not None and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        since = self._since
        if since is None or self._task is None:
            return  # not waiting: the next wait arms the timer again
        left = since + self._limit - self._clock.ticks()
        if left <= 0:
            self.expired = True
            self._task.cancel()
        else:
            self._timer = self._clock.call_later(left, self._check)


class FirstChunkTimeout(AsyncIterator[T], Generic[T]):
    """Wrap ``source``: its first item must arrive within ``timeout_s`` (None: no limit)."""

    def __init__(
        self,
        source: AsyncIterator[T],
        timeout_s: float | None,
        *,
        member: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._source = source
        self._timeout_s = timeout_s
        self._member = member
        self._clock = clock or SystemClock()
        self._started = False

    def __aiter__(self) -> FirstChunkTimeout[T]:
        return self

    @property
    def source(self) -> AsyncIterator[T]:
        """The wrapped iterator: after the first item, read it directly (nothing is timed)."""
        return self._source

    async def __anext__(self) -> T:
        if self._started or not self._timeout_s:
            self._started = True
            return await anext(self._source)
        self._started = True
        watch = _Watch(self._clock, self._timeout_s)
        watch.arm()
        try:
            return await anext(self._source)
        except asyncio.CancelledError:
            if not watch.ours():
                raise
            await aclose_quietly(self._source)
            raise FirstChunkTimeoutError(self._timeout_s, member=self._member) from None
        finally:
            watch.stop()

    async def aclose(self) -> None:
        """Close the source."""
        await aclose_quietly(self._source)


class IdleTimeout(AsyncIterator[T], Generic[T]):
    """Wrap ``source``: each item must arrive within ``idle_s`` of the wait for it."""

    def __init__(
        self,
        source: AsyncIterator[T],
        idle_s: float,
        *,
        member: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._source = source
        self._idle_s = idle_s
        self._member = member
        self._watch = _Watch(clock or SystemClock(), idle_s)

    def __aiter__(self) -> IdleTimeout[T]:
        return self

    async def __anext__(self) -> T:
        watch = self._watch
        watch.arm()
        try:
            return await anext(self._source)
        except asyncio.CancelledError:
            if watch.ours():
                watch.stop()
                await aclose_quietly(self._source)
                raise StreamIdleTimeoutError(self._idle_s, member=self._member) from None
            raise
        finally:
            watch.disarm()

    async def aclose(self) -> None:
        """Stop the timer and close the source."""
        self._watch.stop()
        await aclose_quietly(self._source)
