"""Time, injectable: breakers, TPM buckets and latencies read it; tests replace it.

``now()`` is wall-clock epoch seconds, because breaker and TPM state is shared
between processes through the state store; ``monotonic()`` measures durations.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "Sleep", "SystemClock"]


class Clock(Protocol):
    """The two readings the engine needs."""

    def now(self) -> float:
        """Epoch seconds (comparable across processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for durations."""
        ...


class Sleep(Protocol):
    """An async sleep (``asyncio.sleep`` in production, instant in tests)."""

    async def __call__(self, seconds: float, /) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()


async def real_sleep(seconds: float) -> None:
    """``asyncio.sleep`` with the Sleep signature."""
    # Imported here: a command that only reads the clock (stats) need not import asyncio.
    import asyncio

    await asyncio.sleep(seconds)
