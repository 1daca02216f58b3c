"""When a member may be tried again within one request, and after how long (SPEC §3.2).

:meth:`RetryPolicy.wait` answers for one failed attempt: the seconds to wait before
the same member is tried again (as a same-member retry under ``failover``, or in the
next pass under ``roundrobin``), or None when it must not be tried again in this
request:

- only retryable failures are tried again, and never a timeout (a silent backend stays
  silent) nor a stream that broke after its first chunk;
- a ``Retry-After`` up to ``retry_after_max_ms`` is waited out (at least
  ``failover_retry_delay_ms``); a longer one is not waited for at all;
- a 429 without ``Retry-After`` backs off exponentially with jitter (base
  ``max(failover_retry_delay_ms, 250 ms)``, doubling, at most 4 s): never a tight loop
  against a rate limiter;
- anything else waits ``failover_retry_delay_ms``.

The backoff is tenacity's ``wait_exponential`` (the doubling bound), jittered over the
upper half of each step with an injectable RNG.  Why not tenacity's full-jitter
``wait_random_exponential``: its waits may all land near zero, a burst of retries against
the rate limiter that just said no; jittering over ``[step/2, step]`` keeps the spread
while the floor doubles too, so one member sees at most 4 attempts in any first 3 s
(docs/design.md).  The loop itself is the request's plan (``selection.Plan``), not
tenacity's: under ``roundrobin`` a member's retries are interleaved with the other
members' attempts, one per pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tenacity import RetryCallState
from tenacity.wait import wait_exponential

from lbprovider.errors import BackendError, FailureKind
from lbprovider.settings import LBSettings

__all__ = ["BACKOFF_BASE_S", "BACKOFF_MAX_S", "JitteredBackoff", "RetryPolicy"]

BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 4.0


class JitteredBackoff(wait_exponential):
    """Steps of ``2·base·2^(n-1)`` seconds capped at ``max_s``; each wait uniform in
    ``[step/2, step]`` (so the first wait is between ``base`` and ``2·base``)."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        super().__init__(multiplier=2 * base_s, max=max_s)
        self.rng = rng

    def __call__(self, retry_state: RetryCallState) -> float:
        step = super().__call__(retry_state)
        return self.rng.uniform(step / 2, step)

    def for_retry(self, number: int) -> float:
        """The wait before the ``number``-th retry (1 = the first)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = number
        return self(state)


@dataclass(frozen=True)
class RetryPolicy:
    """The same-member retry rules of one load balancer's settings."""

    attempts: int  # failover_retry_count: attempts (or passes) per member and request
    delay_s: float
    retry_after_max_s: float
    backoff: JitteredBackoff

    @classmethod
    def from_settings(cls, settings: LBSettings, rng: random.Random | None = None) -> RetryPolicy:
        """Read the ``failover_retry_*`` and ``retry_after_max_ms`` settings."""
        delay_s = settings.failover_retry_delay_ms / 1000
        return cls(
            attempts=settings.failover_retry_count,
            delay_s=delay_s,
            retry_after_max_s=settings.retry_after_max_ms / 1000,
            backoff=JitteredBackoff(
                max(delay_s, BACKOFF_BASE_S), BACKOFF_MAX_S, rng or random.Random()
            ),
        )

    def too_long(self, err: BackendError) -> bool:
        """A ``Retry-After`` longer than we wait on one member (the breaker keeps it)."""
        return err.retry_after is not None and err.retry_after > self.retry_after_max_s

    def wait(self, err: BackendError, retry: int) -> float | None:
        """Seconds before the member that failed with ``err`` may be tried again, as its
        ``retry``-th retry in this request; None when it may not."""
        if err.kind is not FailureKind.RETRYABLE or err.timeout or err.interrupted:
            return None
        if err.retry_after is not None:
            if self.too_long(err):
                return None
            return max(self.delay_s, err.retry_after)
        if err.status == 429:
            return self.backoff.for_retry(retry)
        return self.delay_s
