"""The first-chunk timeout (SPEC §4), as a wrapper around any async iterator.

Only the first item is timed.  On expiry the source is closed (so an HTTP stream
releases its connection and the backend sees the disconnect) and
:class:`FirstChunkTimeoutError` is raised, which the classifier treats as
retryable.  After the first item nothing is timed: a slow but live stream is
never cut.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

from lbprovider.errors import FirstChunkTimeoutError

__all__ = ["FirstChunkTimeout", "aclose_quietly"]

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
