"""Panic probes (SPEC §3.3 [v3]): with every breaker open, one request probes the member
that recovers first, so a fleet that was entirely down serves again at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lbprovider.errors import NoBackendAvailableError
from lbprovider.state.memory import MemoryStore
from lbprovider.testing import FakeClock, ScriptedTransport, answer, fail
from tests.conftest import HI, make_lb

BREAKERS: dict[str, Any] = {
    "failover_retry_count": 1,
    "circuit_breaker_enabled": True,
    "circuit_breaker_failure_threshold": 1,
    "circuit_breaker_recovery_timeout_ms": 30_000,
    "circuit_breaker_max_recovery_timeout_ms": 300_000,
}
SERVERS = {"a": "http://127.0.0.1:9/v1", "b": "http://127.0.0.1:9/v1"}


def down(transport: ScriptedTransport, **settings: Any) -> Any:
    """A round-robin load balancer whose members both fail (and so open their breakers)."""
    transport.script("a", fail(503)).script("b", fail(503))
    return make_lb(
        SERVERS,
        "roundrobin",
        transport=transport,
        clock=transport.clock,
        store=MemoryStore(),
        **{**BREAKERS, **settings},
    )


async def open_everything(lb: Any) -> None:
    with pytest.raises(NoBackendAvailableError):
        await lb.complete(HI)
    states = lb.stats()["circuitBreakerStates"]
    assert {s["state"] for s in states.values()} == {"open"}


async def test_the_first_request_after_the_return_is_served() -> None:
    """Backends back, breakers still open: a panic probe on the first to recover serves,
    closes its breaker, and is counted."""
    clock = FakeClock()
    transport = ScriptedTransport(clock)
    lb = down(transport)
    await open_everything(lb)
    clock.advance(5)  # well before the 30 s recovery
    transport.script("a", answer("back")).script("b", answer("back"))
    result = await lb.complete(HI)
    assert result.text == "back"
    report = lb.stats()
    assert report["panicProbes"] == 1
    assert report["circuitBreakerStates"][result.backend]["state"] == "closed"


async def test_a_failed_panic_probe_doubles_and_the_request_fails() -> None:
    """Still down: the probe fails like a half-open probe (recovery doubled), with a
    Retry-After of at most 30 s."""
    clock = FakeClock()
    transport = ScriptedTransport(clock)
    lb = down(transport, circuit_breaker_recovery_timeout_ms=200_000)
    await open_everything(lb)
    with pytest.raises(NoBackendAvailableError) as caught:
        await lb.complete(HI)
    assert caught.value.retry_after is not None and caught.value.retry_after <= 30
    assert lb.stats()["panicProbes"] == 1
    assert transport.hits("a") + transport.hits("b") == 3  # two opening, one probe


async def test_one_panic_probe_at_a_time() -> None:
    """A second request while a panic probe is in flight fails at once."""
    clock = FakeClock()
    transport = ScriptedTransport(clock)
    lb = down(transport)
    await open_everything(lb)
    hold = asyncio.Event()
    transport.script("a", answer("slow", hold=hold)).script("b", answer("slow", hold=hold))
    first = asyncio.create_task(lb.complete(HI))
    for _ in range(1000):  # until the probe reached its member (bounded, no real waiting)
        if len(transport.calls) == 3:
            break
        await asyncio.sleep(0)
    assert len(transport.calls) == 3
    with pytest.raises(NoBackendAvailableError):
        await lb.complete(HI)
    hold.set()
    assert (await first).text == "slow"


async def test_no_panic_probe_when_disabled_or_benched() -> None:
    """panic_probe_enabled false, or a member benched by hand: fail as before."""
    clock = FakeClock()
    transport = ScriptedTransport(clock)
    lb = down(transport, panic_probe_enabled=False)
    await open_everything(lb)
    transport.script("a", answer()).script("b", answer())
    with pytest.raises(NoBackendAvailableError):
        await lb.complete(HI)
    benched = down(ScriptedTransport(clock))
    benched.bench("a", 600)
    benched.bench("b", 600)
    with pytest.raises(NoBackendAvailableError):
        await benched.complete(HI)
    assert benched.stats()["panicProbes"] == 0
