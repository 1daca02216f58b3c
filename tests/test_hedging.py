"""Budgeted hedging (SPEC §4.3): with no first chunk after hedge_after_ms, the next
candidate starts alongside; the first to answer serves, the other is closed."""

from __future__ import annotations

import asyncio
from typing import Any

from lbprovider.state.memory import MemoryStore
from lbprovider.testing import FakeClock, ScriptedTransport, answer, stall
from tests.conftest import HI, make_lb

SERVERS = {"a": "http://127.0.0.1:9/v1", "b": "http://127.0.0.1:9/v1", "c": "http://127.0.0.1:9/v1"}


def hedging(transport: ScriptedTransport, **settings: Any) -> Any:
    """Round-robin over a, b, c, hedging after 500 ms, on the transport's clock."""
    settings.setdefault("hedge_after_ms", 500)
    return make_lb(
        SERVERS,
        "roundrobin",
        transport=transport,
        clock=transport.clock,
        store=MemoryStore(),
        circuit_breaker_enabled=True,
        **settings,
    )


async def run_until(clock: FakeClock, task: asyncio.Task[Any], step: float = 0.1) -> Any:
    """Move the clock in steps until the task is done (bounded: 1000 steps)."""
    for _ in range(1000):
        await asyncio.sleep(0)
        if task.done():
            return task.result()
        clock.advance(step)
    raise AssertionError("the request did not end")


async def test_a_hedge_wins_over_a_stall_and_closes_the_loser() -> None:
    """a stalls; after hedge_after_ms b starts and serves; a is closed, counted lost, not
    failed, its breaker untouched."""
    clock = FakeClock(timers=True)
    transport = ScriptedTransport(clock).script("a", stall()).script("b", answer("from b"))
    lb = hedging(transport)
    result = await run_until(clock, asyncio.create_task(lb.complete(HI)))
    assert (result.backend, result.text) == ("b", "from b")
    assert transport.closed == 1
    report = lb.stats()
    assert (report["hedges"], report["hedgeWins"]) == (1, 1)
    a = report["backendMetrics"]["a"]
    assert (a["hedgesLost"], a["failures"], a["cancelled"]) == (1, 0, 1)
    assert report["circuitBreakerStates"]["a"]["failures"] == 0


async def test_no_hedge_when_the_first_answers_in_time() -> None:
    """An answer before hedge_after_ms: nothing else is started."""
    clock = FakeClock(timers=True)
    transport = ScriptedTransport(clock).script("a", answer(delay=0.2))
    lb = hedging(transport)
    result = await run_until(clock, asyncio.create_task(lb.complete(HI)))
    assert result.backend == "a" and transport.hits("b") == 0
    assert lb.stats()["hedges"] == 0


async def test_the_budget_caps_hedges() -> None:
    """hedge_budget_percent 0: one hedge a minute (the "plus one"), then none — the stalled
    first pick runs into its own first-chunk timeout instead."""
    clock = FakeClock(timers=True)
    transport = ScriptedTransport(clock)
    for name in SERVERS:
        transport.script(name, stall())
    transport.script("b", answer("b"))
    lb = hedging(transport, hedge_budget_percent=0, timeout_ms=2000, failover_retry_count=1)
    first = await run_until(clock, asyncio.create_task(lb.complete(HI)))
    assert first.backend == "b"
    transport.script("b", stall())
    transport.script("c", answer("c"))
    # The second request starts at b (round-robin): it stalls, no hedge is allowed, so
    # b's first-chunk timeout moves the request on to c.
    second = await run_until(clock, asyncio.create_task(lb.complete(HI)))
    assert second.backend == "c"
    report = lb.stats()
    assert report["hedges"] == 1
    assert report["backendMetrics"]["b"]["timeouts"] == 1


async def test_no_hedge_without_the_setting() -> None:
    """hedge_after_ms 0 (the default): a stall waits for the first-chunk timeout."""
    clock = FakeClock(timers=True)
    transport = ScriptedTransport(clock).script("a", stall())
    lb = hedging(transport, hedge_after_ms=0, timeout_ms=2000, failover_retry_count=1)
    result = await run_until(clock, asyncio.create_task(lb.complete(HI)))
    assert result.backend == "b"
    report = lb.stats()
    assert report["hedges"] == 0 and report["backendMetrics"]["a"]["timeouts"] == 1
