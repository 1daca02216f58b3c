"""Resources that belong to one event loop (a connection pool, a client), made on first
use and closed when that loop shuts down.

A loop has no close hook, but ``asyncio.run`` (and pytest's loops) finalise every live
async generator before closing the loop: each resource comes with a started async
generator whose ``finally`` closes it.  A host whose loop never ends (a background
thread's) simply keeps its resource.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One ``T`` per running event loop: ``make()`` builds it, ``close(it)`` ends it."""

    def __init__(
        self,
        make: Callable[[], T],
        close: Callable[[T], Awaitable[object]],
        *,
        alive: Callable[[T], bool],
    ) -> None:
        self._make = make
        self._close = close
        self._alive = alive
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        # Held here because a loop keeps only a weak reference to its async generators.
        self._closers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncGenerator[None, None]
        ] = weakref.WeakKeyDictionary()

    async def get(self) -> T:
        """The running loop's ``T``, made on first use (or again after it was closed)."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None or not self._alive(item):
            item = self._items[loop] = self._make()
            closer = self._close_at_shutdown(loop, item)
            await anext(closer)
            self._closers[loop] = closer
        return item

    def peek(self) -> T | None:
        """The running loop's ``T`` if it has one already (None outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._items.get(loop)

    async def close(self) -> None:
        """Close the running loop's ``T`` now (idempotent)."""
        closer = self._closers.get(asyncio.get_running_loop())
        if closer is not None:
            await closer.aclose()

    async def _close_at_shutdown(
        self, loop: asyncio.AbstractEventLoop, item: T
    ) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            # Forget the loop too: the item may refer to it, and would keep it alive.
            if self._items.get(loop) is item:
                del self._items[loop]
                self._closers.pop(loop, None)
            await self._close(item)
