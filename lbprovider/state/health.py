"""The state store's own health (SPEC §7): when the store fails, serve from memory.

A pybreaker ``CircuitBreaker`` fits here, unlike for backends: what matters is
consecutive failures of one resource seen by one process, and an open guard must refuse
at once — no connection attempt, no timeout per request — until its reset timeout, after
which one call tries the store again.  The process warns once when the store is lost
and once when it is back; between the two every request is served with state in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pybreaker

__all__ = ["StoreHealth"]

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
        self._catch: tuple[type[BaseException], ...] = (pybreaker.CircuitBreakerError, *failures)
        self._guard = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            # Only a failure of the store says something about its health; an updater's
            # own exception is its caller's business.
            exclude=[lambda exc: not isinstance(exc, failures)],
        )
        self.degraded = False

    @property
    def reset_timeout_s(self) -> float:
        """Seconds between two attempts while the store is lost."""
        return float(self._guard.reset_timeout)

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Run the body through the guard; raises :class:`Unavailable` instead of a
        store failure (or at once while the guard is open)."""
        try:
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
