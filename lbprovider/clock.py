"""Time, injectable: breakers, TPM buckets, latencies and timeouts read it; tests
replace it.

``now()`` is wall-clock epoch seconds, because breaker and TPM state is shared
between processes through the state store; ``monotonic()`` measures durations;
``call_later()`` arms a timer on the time line ``ticks()`` reads, which is how the
first-chunk and idle timeouts fire (so a test's clock can move them too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "Sleep", "SystemClock", "Timer"]


class Timer(Protocol):
    """An armed timer."""

    def cancel(self) -> None:
        """Disarm it (idempotent)."""
        ...


class Clock(Protocol):
    """The readings (and the timer) the engine needs."""

    def now(self) -> float:
        """Epoch seconds (comparable across processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for durations."""
        ...

    def ticks(self) -> float:
        """Seconds on the time line the timers of :meth:`call_later` run on."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``delay`` seconds of :meth:`ticks` have passed."""
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

    def ticks(self) -> float:
        """The running event loop's time."""
        import asyncio  # only where a request runs: `stats` reads the clock, no loop

        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """The running event loop's timer."""
        import asyncio

        handle: Timer = asyncio.get_running_loop().call_later(delay, callback)
        return handle


async def real_sleep(seconds: float) -> None:
    """``asyncio.sleep`` with the Sleep signature."""
    # Imported here: a command that only reads the clock (stats) need not import asyncio.
    import asyncio

    await asyncio.sleep(seconds)
