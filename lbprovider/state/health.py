"""The state store's own health (SPEC §7): when the store fails, serve from memory.

A pybreaker ``CircuitBreaker`` fits here, unlike for backends: what matters is
consecutive failures of one resource seen by one process, and an open guard must refuse
at once — no connection attempt, no timeout per request — until its reset timeout, after
which one call tries the store again.  The process warns once when the store is lost
and once when it is back; between the two every request is served with state in memory.

The guard is made at the store's first failure: until then it would only count zero
failures, and importing pybreaker imports redis-py whenever that is installed (~100 ms
on a ``stats`` or ``chat`` call that never needs it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pybreaker

__all__ = ["StoreHealth", "Unavailable"]

logger = logging.getLogger("lbprovider")


class StoreHealth:
    """Guards calls to one store; ``failures`` are the exceptions that mean "unreachable"."""

    def __init__(
        self,
        *,
        lost: str,
        back: str,
        failures: tuple[type[BaseException], ...],
        fail_max: int,
        reset_timeout_s: float,
    ) -> None:
        self._lost = lost
        self._back = back
        self._failures = failures
        self._fail_max = fail_max
        self.reset_timeout_s = reset_timeout_s  # seconds between two attempts while lost
        self._guard: pybreaker.CircuitBreaker | None = None
        self._catch: tuple[type[BaseException], ...] = failures
        self.degraded = False

    def _make_guard(self) -> pybreaker.CircuitBreaker:
        import pybreaker

        failures = self._failures
        self._catch = (pybreaker.CircuitBreakerError, *failures)
        return pybreaker.CircuitBreaker(
            fail_max=self._fail_max,
            reset_timeout=self.reset_timeout_s,
            # Only a failure of the store says something about its health; an updater's
            # own exception is its caller's business.
            exclude=[lambda exc: not isinstance(exc, failures)],
        )

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Run the body through the guard; raises :class:`Unavailable` instead of a
        store failure (or at once while the guard is open)."""
        try:
            if self._guard is None:
                try:
                    yield
                except self._failures as exc:
                    # The first failure: the guard starts counting with it.
                    self._guard = self._make_guard()
                    with contextlib.suppress(BaseException), self._guard.calling():
                        raise exc
                    raise
            else:
                with self._guard.calling():
                    yield
        except self._catch as exc:
            if not self.degraded:
                self.degraded = True
                logger.warning(self._lost, exc, self.reset_timeout_s)
            raise Unavailable(str(exc)) from exc
        if self.degraded:
            self.degraded = False
            logger.warning(self._back)


class Unavailable(Exception):
    """The store cannot serve this call: use memory instead.  Never leaves a store."""
