"""SPEC §3.3: circuit breakers, as pure transitions and over real HTTP with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from lbprovider import breaker as brk
from lbprovider.breaker import Admission, BreakerPolicy, BreakerRecord, BreakerState
from lbprovider.errors import NoBackendAvailableError
from lbprovider.sim import serve
from lbprovider.testing import FakeClock
from tests.conftest import HI, make_lb

POLICY = BreakerPolicy(enabled=True, threshold=3, window_s=60, recovery_s=30, max_recovery_s=100)
T0 = 1_000_000.0


def fail(
    rec: BreakerRecord, at: float, retry_after: float | None = None, probe: bool = False
) -> BreakerRecord:
    """One final failure at time ``at``."""
    return brk.on_failure(rec, at, POLICY, retry_after, probe=probe)


# -- pure transitions --------------------------------------------------------------------------


def test_opens_at_threshold_within_window() -> None:
    """Closed → open when the failures inside the window reach the threshold."""
    rec = fail(fail(BreakerRecord(), T0), T0 + 10)
    assert rec.state is BreakerState.CLOSED
    rec = fail(rec, T0 + 20)
    assert rec.state is BreakerState.OPEN
    assert (rec.opened_at, rec.recovery_at) == (T0 + 20, T0 + 50)


def test_failures_outside_window_pruned() -> None:
    """Failures older than the window do not count."""
    rec = fail(fail(BreakerRecord(), T0), T0 + 10)
    rec = fail(rec, T0 + 65)  # the first one left the window
    assert rec.state is BreakerState.CLOSED
    assert rec.failures_in_window(T0 + 65, 60) == 2
    assert len(rec.failures) == 2


def test_open_skips_until_recovery_then_one_probe() -> None:
    """Open skips during recovery; afterwards exactly one probe is admitted."""
    rec = fail(fail(fail(BreakerRecord(), T0), T0), T0)
    assert brk.admit(rec, T0 + 29.9, POLICY)[0] is Admission.SKIP
    admission, rec = brk.admit(rec, T0 + 30, POLICY)
    assert admission is Admission.PROBE and rec.state is BreakerState.HALF_OPEN
    assert brk.admit(rec, T0 + 31, POLICY)[0] is Admission.SKIP


def test_probe_success_closes_and_resets() -> None:
    """A probe's success closes the breaker, clearing failures and the recovery time."""
    rec = fail(fail(fail(BreakerRecord(), T0), T0), T0)
    _, rec = brk.admit(rec, T0 + 30, POLICY)
    rec = brk.on_success(rec, T0 + 31, POLICY, probe=True)
    assert rec == BreakerRecord()


def test_probe_failure_doubles_recovery_capped() -> None:
    """Each consecutive re-open doubles the recovery time, up to the maximum."""
    rec = fail(fail(fail(BreakerRecord(), T0), T0), T0)
    periods = []
    now = T0
    for _ in range(4):
        now = rec.recovery_at or now
        _, rec = brk.admit(rec, now, POLICY)
        rec = fail(rec, now, probe=True)
        assert rec.state is BreakerState.OPEN
        periods.append((rec.recovery_at or 0) - now)
    assert periods == [60, 100, 100, 100]


def test_retry_after_keeps_open_and_never_shortens() -> None:
    """Retry-After lengthens an opening and never shortens an open period."""
    rec = fail(fail(BreakerRecord(), T0), T0)
    rec = fail(rec, T0, retry_after=120)
    assert rec.recovery_at == T0 + 120
    shorter = fail(rec, T0 + 1, retry_after=5)
    assert shorter.recovery_at == T0 + 120
    longer = fail(rec, T0 + 1, retry_after=200)
    assert longer.recovery_at == T0 + 201


def test_release_frees_probe_without_counting() -> None:
    """A cancelled probe frees the slot and counts nothing."""
    rec = fail(fail(fail(BreakerRecord(), T0), T0), T0)
    _, rec = brk.admit(rec, T0 + 30, POLICY)
    rec = brk.on_release(rec, probe=True)
    assert rec.state is BreakerState.HALF_OPEN and rec.probe_started_at is None
    assert brk.admit(rec, T0 + 31, POLICY)[0] is Admission.PROBE


def test_stale_probe_lease_expires() -> None:
    """A probe whose process died does not block the member forever."""
    rec = fail(fail(fail(BreakerRecord(), T0), T0), T0)
    _, rec = brk.admit(rec, T0 + 30, POLICY)
    assert brk.admit(rec, T0 + 59, POLICY)[0] is Admission.SKIP
    assert brk.admit(rec, T0 + 61, POLICY)[0] is Admission.PROBE


def test_bench_and_unbench() -> None:
    """A manual bench skips until its end, then closes; unbench closes at once."""
    rec = brk.bench(BreakerRecord(), T0, 10)
    assert brk.admit(rec, T0 + 9, POLICY)[0] is Admission.SKIP
    admission, after = brk.admit(rec, T0 + 10, POLICY)
    assert admission is Admission.ALLOW and after.state is BreakerState.CLOSED
    assert brk.unbench(rec).state is BreakerState.CLOSED
    assert fail(rec, T0 + 1).recovery_at == T0 + 10  # failures do not touch a bench


def test_round_trip_dict() -> None:
    """Records survive the store's JSON form."""
    rec = fail(fail(fail(BreakerRecord(), T0), T0), T0, retry_after=40)
    assert BreakerRecord.from_dict(rec.to_dict()) == rec


# -- over HTTP ---------------------------------------------------------------------------------


def breaker_settings(**extra: object) -> dict[str, object]:
    """Breakers on, threshold 2, one attempt per member."""
    return {
        "circuit_breaker_enabled": True,
        "circuit_breaker_failure_threshold": 2,
        "failover_retry_count": 1,
        **extra,
    }


@pytest.mark.usefixtures("both_transports")
async def test_open_member_gets_no_hits_until_recovery() -> None:
    """Once open, the failing member is skipped (no hits) until its recovery time."""
    async with serve("status=503") as a, serve() as b:
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b}, "roundrobin", clock=clock, **breaker_settings())
        for _ in range(4):
            assert (await lb.complete(HI)).backend == "b"
        assert a.hits == 2
        state = lb.stats()["circuitBreakerStates"]["a"]
        assert state["state"] == "open"
        assert state["recoveryAt"] == round((clock.now() + 30) * 1000)
        clock.advance(29)
        await lb.complete(HI)
        await lb.complete(HI)
        assert a.hits == 2
        clock.advance(1)
        await lb.complete(HI)
        await lb.complete(HI)
        assert a.hits == 3  # the probe
        assert lb.stats()["circuitBreakerStates"]["a"]["state"] == "open"


@pytest.mark.usefixtures("both_transports")
async def test_exactly_one_probe_under_concurrency() -> None:
    """In half-open, one of many concurrent requests probes; the rest skip to the next."""
    async with serve("status=503") as a, serve() as b:
        clock = FakeClock()
        lb = make_lb(
            {"a": a, "b": b}, clock=clock, **breaker_settings(circuit_breaker_failure_threshold=1)
        )
        await lb.complete(HI)  # a opens; sticky moves to b
        lb.store.update("lb:lbtest", lambda raw: {**raw, "sticky": 0})  # start at a again
        a.behavior = a.behavior.parse("stall_first_chunk=0.2")
        clock.advance(30)
        results = await asyncio.gather(*(lb.complete(HI) for _ in range(10)))
        assert a.hits == 2  # the opening failure + exactly one probe
        assert sorted(r.backend for r in results).count("a") == 1
        stats = lb.stats()
        assert stats["backendMetrics"]["a"]["skips"] == 9
        assert stats["circuitBreakerStates"]["a"]["state"] == "closed"  # probe succeeded


@pytest.mark.usefixtures("both_transports")
async def test_probe_failure_reopens_doubled() -> None:
    """A failed probe re-opens the breaker for twice the recovery time."""
    async with serve("status=503") as a, serve() as b:
        clock = FakeClock()
        lb = make_lb(
            {"a": a, "b": b},
            "roundrobin",
            clock=clock,
            **breaker_settings(circuit_breaker_failure_threshold=1),
        )
        await lb.complete(HI)
        clock.advance(30)
        await lb.complete(HI)  # starts at b
        await lb.complete(HI)  # starts at a: the probe, which fails
        state = lb.stats()["circuitBreakerStates"]["a"]
        assert (a.hits, state["state"]) == (2, "open")
        assert state["recoveryAt"] == round((clock.now() + 60) * 1000)


@pytest.mark.usefixtures("both_transports")
async def test_retry_after_respected_by_breaker() -> None:
    """A Retry-After longer than the recovery time keeps the breaker open that long."""
    async with serve("status=503,retry_after=90") as a, serve() as b:
        clock = FakeClock()
        lb = make_lb(
            {"a": a, "b": b}, clock=clock, **breaker_settings(circuit_breaker_failure_threshold=1)
        )
        await lb.complete(HI)
        state = lb.stats()["circuitBreakerStates"]["a"]
        assert state["recoveryAt"] == round((clock.now() + 90) * 1000)


@pytest.mark.usefixtures("both_transports")
async def test_all_open_error_says_when_first_recovers() -> None:
    """With every member open, the error is retryable and names the first recovery."""
    async with serve() as a, serve() as b:
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b}, clock=clock, **breaker_settings())
        lb.bench("a", 120)
        lb.bench("b", 45)
        with pytest.raises(NoBackendAvailableError) as info:
            await lb.complete(HI)
        err = info.value
        assert err.retryable
        assert err.recovery_at == clock.now() + 45
        assert "recovers in 45 s" in str(err)
        assert "a: skipped: benched until" in str(err)
        assert (a.hits, b.hits) == (0, 0)


@pytest.mark.usefixtures("both_transports")
async def test_breakers_shared_between_load_balancers() -> None:
    """A breaker belongs to the member: another LB on the same store sees it open."""
    async with serve("status=503") as a, serve() as b:
        clock = FakeClock()
        first = make_lb(
            {"a": a, "b": b}, clock=clock, **breaker_settings(circuit_breaker_failure_threshold=1)
        )
        await first.complete(HI)
        second = make_lb(
            {"a": a, "b": b}, clock=clock, store=first.store, name="other", **breaker_settings()
        )
        assert (await second.complete(HI)).backend == "b"
        assert a.hits == 1


@pytest.mark.usefixtures("both_transports")
async def test_disabled_breakers_record_nothing() -> None:
    """With breakers off (the default), failures never open anything."""
    async with serve("status=503") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, "roundrobin", clock=FakeClock(), failover_retry_count=1)
        for _ in range(6):
            await lb.complete(HI)
        assert a.hits == 3
        assert lb.stats()["circuitBreakerStates"]["a"]["state"] == "closed"
