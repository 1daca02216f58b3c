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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from lbprovider.errors import FirstChunkTimeoutError, StreamIdleTimeoutError

__all__ = ["FirstChunkTimeout", "IdleTimeout", "aclose_quietly"]

T = TypeVar("T")


async def aclose_quietly(it: AsyncIterator[object]) -> None:
    """Close an async iterator if it can be closed."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


class FirstChunkTimeout(AsyncIterator[T], Generic[T]):
    """Wrap ``source``: its first item must arrive within ``timeout_s`` (None: no limit)."""

    def __init__(
        self, source: AsyncIterator[T], timeout_s: float | None, *, member: str | None = None
    ) -> None:
        self._source = source
        self._timeout_s = timeout_s
        self._member = member
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
        try:
            async with asyncio.timeout(self._timeout_s) as deadline:
                return await anext(self._source)
        except TimeoutError:
            if not deadline.expired():
                raise  # a timeout of the source's own, not ours
            await aclose_quietly(self._source)
            raise FirstChunkTimeoutError(self._timeout_s, member=self._member) from None

    async def aclose(self) -> None:
        """Close the source."""
        await aclose_quietly(self._source)


class IdleTimeout(AsyncIterator[T], Generic[T]):
    """Wrap ``source``: each item must arrive within ``idle_s`` of the wait for it."""

    def __init__(
        self, source: AsyncIterator[T], idle_s: float, *, member: str | None = None
    ) -> None:
        self._source = source
        self._idle_s = idle_s
        self._member = member
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._expired = False

    def __aiter__(self) -> IdleTimeout[T]:
        return self

    async def __anext__(self) -> T:
        task = self._task = asyncio.current_task()
        assert task is not None
        self._cancelling = task.cancelling()
        self._waiting_since = now = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._idle_s, self._check)
        try:
            return await anext(self._source)
        except asyncio.CancelledError:
            if self._expired and task.uncancel() <= self._cancelling:
                await aclose_quietly(self._source)
                raise StreamIdleTimeoutError(self._idle_s, member=self._member) from None
            raise
        finally:
            self._waiting_since = None

    def _check(self) -> None:
        """The timer: expire if the current wait is ``idle_s`` old, else look again later."""
        self._timer = None
        since = self._waiting_since
        if since is None or self._task is None:
            return  # not waiting: the next wait arms the timer again
        due = since + self._idle_s
        if self._loop.time() >= due:
            self._expired = True
            self._task.cancel()
        else:
            self._timer = self._loop.call_at(due, self._check)

    async def aclose(self) -> None:
        """Stop the timer and close the source."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await aclose_quietly(self._source)
