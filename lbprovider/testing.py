"""Test helpers that ship with the package (like ``trio.testing``).

:class:`FakeClock` is a :class:`lbprovider.clock.Clock` whose time moves only when
told to; its :meth:`FakeClock.sleep` advances it instantly, so retry delays and
breaker recovery periods cost no real time.
"""

from __future__ import annotations

import asyncio

__all__ = ["FakeClock"]


class FakeClock:
    """A clock for tests: ``now()`` and ``monotonic()`` move together, by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self.slept: list[float] = []

    def now(self) -> float:
        """Epoch seconds."""
        return self._now

    def monotonic(self) -> float:
        """Seconds since the clock was made."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the wait, advance time, yield to the loop once."""
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
