"""SPEC v2 §3.1–3.3 before the first chunk: passes, waits, fail-back, content policy,
one probe, hooks — with ScriptedTransport and an injected clock (no sockets, no sleep)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lbprovider.errors import NoBackendAvailableError, RequestRejectedError
from lbprovider.events import Event, EventKind
from lbprovider.testing import FakeClock, ScriptedTransport, answer, fail, stall
from tests.conftest import HI, WriteProfile, lb, make_lb, member, run_scripts

FAULTS = {
    "refused": fail(network=True, message="cannot connect to 127.0.0.1:9: Connection refused"),
    "503": fail(503),
    "429": fail(429),
}


def scripted(
    names: str,
    policy: str = "roundrobin",
    *,
    clock: FakeClock | None = None,
    events: list[Event] | None = None,
    **settings: Any,
) -> tuple[Any, ScriptedTransport, FakeClock]:
    """A load balancer over members named by the letters of ``names``, scripted."""
    clock = clock or FakeClock()
    transport = ScriptedTransport(clock)
    provider = make_lb(
        {n: f"http://{n}.invalid/v1" for n in names},
        policy,
        clock=clock,
        transport=transport,
        events=events,
        **settings,
    )
    return provider, transport, clock


def order(transport: ScriptedTransport) -> str:
    """The members called, in order, as one string."""
    return "".join(c.member for c in transport.calls)


# -- round-robin passes ------------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_roundrobin_serves_from_next_member_without_same_member_retry(fault: str) -> None:
    """A refused, 503 or 429 member: the next member serves at once, nothing retried first."""
    lb_, transport, clock = scripted("abc")
    transport.script("a", FAULTS[fault])
    result = await lb_.complete(HI)
    assert result.backend == "b"
    assert order(transport) == "ab"
    assert clock.slept == []


async def test_passes_retry_only_retryable_members_after_their_wait() -> None:
    """Pass 2 and 3 retry only the members that failed retryably, each after its wait."""
    lb_, transport, clock = scripted("abc", failover_retry_count=3, failover_retry_delay_ms=100)
    transport.script("a", fail(503))
    transport.script("b", fail(401))
    transport.script("c", fail(502))
    with pytest.raises(NoBackendAvailableError) as info:
        await lb_.complete(HI)
    assert order(transport) == "abcacac"
    # Attempts take no time here, so each new pass waits the delay once for its first member.
    assert clock.slept == [0.1, 0.1]
    assert [f.member for f in info.value.failures] == ["b", "a", "c"]
    assert info.value.retryable


async def test_later_pass_serves() -> None:
    """A member that failed retryably in pass 1 may serve in pass 2."""
    lb_, transport, _ = scripted("ab")
    transport.script("a", fail(503), answer("second time lucky"))
    transport.script("b", fail(503))
    result = await lb_.complete(HI)
    assert (result.backend, result.text) == ("a", "second time lucky")
    assert order(transport) == "aba"


# -- waits -------------------------------------------------------------------------------------


async def test_retry_after_within_cap_is_waited_out() -> None:
    """Retry-After up to retry_after_max_ms: the same member is retried after it."""
    lb_, transport, clock = scripted("ab", "failover")
    transport.script("a", fail(429, retry_after=2), answer("after the wait"))
    result = await lb_.complete(HI)
    assert (result.backend, order(transport)) == ("a", "aa")
    assert clock.slept == [2.0]


async def test_retry_after_above_cap_moves_on_and_opens_breaker() -> None:
    """A longer Retry-After moves on at once and opens the breaker at least that long,
    whatever the failure count."""
    lb_, transport, clock = scripted(
        "ab",
        "failover",
        retry_after_max_ms=10_000,
        circuit_breaker_enabled=True,
        circuit_breaker_failure_threshold=5,
    )
    transport.script("a", fail(429, retry_after=120))
    result = await lb_.complete(HI)
    assert (result.backend, order(transport)) == ("b", "ab")
    assert clock.slept == []
    state = lb_.stats()["circuitBreakerStates"]["a"]
    assert state["state"] == "open"
    assert state["recoveryAt"] >= (clock.now() + 120) * 1000


@pytest.mark.parametrize("seed", range(12))
async def test_429_backoff_is_bounded_and_jittered(seed: int) -> None:
    """429 without Retry-After: waits double within [step/2, step] up to 4 s, so one
    member never sees more than 4 attempts in its first 3 s."""
    lb_, transport, clock = scripted(
        "ab", "failover", failover_retry_count=8, rng=random.Random(seed)
    )
    transport.script("a", fail(429))
    start = clock.now()
    await lb_.complete(HI)
    times = [c.at for c in transport.calls if c.member == "a"]
    assert len(times) == 8
    assert sum(1 for t in times if t is not None and t - start < 3) <= 4
    steps = [0.5, 1, 2, 4, 4, 4, 4]
    assert all(step / 2 <= w <= step for w, step in zip(clock.slept, steps, strict=True))


async def test_429_backoff_differs_by_seed() -> None:
    """The waits are jittered: two seeds give two different schedules."""
    schedules = []
    for seed in (1, 2):
        lb_, transport, clock = scripted(
            "ab", "failover", failover_retry_count=4, rng=random.Random(seed)
        )
        transport.script("a", fail(429))
        await lb_.complete(HI)
        schedules.append(clock.slept)
    assert schedules[0] != schedules[1]


async def test_stalled_first_chunk_costs_one_timeout() -> None:
    """A stalled first chunk: one timeout_ms, then the next member; never retried (not
    even in a later pass)."""
    lb_, transport, _ = scripted("abc", timeout_ms=50, failover_retry_count=3)
    transport.script("a", stall())
    transport.script("b", fail(503))
    transport.script("c", fail(503), answer("c at last"))
    result = await lb_.complete(HI)
    assert result.backend == "c"
    assert order(transport) == "abcbc"
    assert transport.closed == 1  # the stalled stream was closed
    metrics = lb_.stats()["backendMetrics"]["a"]
    assert (metrics["timeouts"], metrics["requests"]) == (1, 1)


# -- content policy ------------------------------------------------------------------------------


async def test_content_policy_ends_the_request_with_the_reason() -> None:
    """A content-policy refusal is the answer: not retryable, the provider's reason shown,
    nobody else asked, no breaker failure."""
    lb_, transport, _ = scripted(
        "ab",
        "failover",
        circuit_breaker_enabled=True,
        circuit_breaker_failure_threshold=1,
    )
    refusal = "Your request was rejected by the safety system"
    transport.script("a", fail(400, code="content_policy_violation", message=refusal))
    with pytest.raises(RequestRejectedError) as info:
        await lb_.complete(HI)
    assert info.value.retryable is False
    assert refusal in str(info.value)
    assert order(transport) == "a"
    assert lb_.stats()["circuitBreakerStates"]["a"]["state"] == "closed"


async def test_content_policy_moves_on_with_the_setting() -> None:
    """failover_on_content_policy: the refusal is request-specific and the next member serves."""
    lb_, transport, _ = scripted(
        "ab", "failover", failover_on_content_policy=True, circuit_breaker_enabled=True
    )
    transport.script("a", fail(400, code="content_filter"))
    result = await lb_.complete(HI)
    assert (result.backend, order(transport)) == ("b", "ab")
    assert lb_.stats()["circuitBreakerStates"]["a"]["failures"] == 0


async def test_context_window_still_moves_on() -> None:
    """A context-window error is request-specific: another member may have a larger window."""
    lb_, transport, _ = scripted("ab", "failover")
    transport.script("a", fail(400, code="context_length_exceeded"))
    assert (await lb_.complete(HI)).backend == "b"


# -- fail-back -------------------------------------------------------------------------------------


async def test_failback_returns_to_member_zero_after_recovery() -> None:
    """After failback_after_ms away, one request tries member 0 again; it serves from then on."""
    events: list[Event] = []
    lb_, transport, clock = scripted(
        "ab", "failover", failover_retry_count=1, failback_after_ms=30_000, events=events
    )
    transport.script("a", fail(503), answer("a is back"))
    assert (await lb_.complete(HI)).backend == "b"
    clock.advance(10)
    assert (await lb_.complete(HI)).backend == "b"  # not yet due
    clock.advance(21)
    assert (await lb_.complete(HI)).backend == "a"
    assert (await lb_.complete(HI)).backend == "a"
    assert order(transport) == "abbaa"
    assert lb_.stats()["failbacks"] == 1
    assert [e.outcome for e in events if e.kind is EventKind.FAILBACK] == ["success"]


async def test_failback_probes_once_per_interval_under_concurrency() -> None:
    """While member 0 still fails, one request per interval tries it, however many run."""
    events: list[Event] = []
    lb_, transport, clock = scripted(
        "ab", "failover", failover_retry_count=1, failback_after_ms=30_000, events=events
    )
    transport.script("a", fail(503))
    await lb_.complete(HI)
    clock.advance(31)
    results = await asyncio.gather(*(lb_.complete(HI) for _ in range(10)))
    assert {r.backend for r in results} == {"b"}
    assert transport.hits("a") == 2  # the first failure, then exactly one fail-back attempt
    clock.advance(29)
    await asyncio.gather(*(lb_.complete(HI) for _ in range(5)))
    assert transport.hits("a") == 2  # the interval restarted with the attempt
    clock.advance(2)
    await asyncio.gather(*(lb_.complete(HI) for _ in range(5)))
    assert transport.hits("a") == 3
    assert [e.outcome for e in events if e.kind is EventKind.FAILBACK] == ["failure"] * 2


async def test_failback_waits_for_the_breaker_without_using_the_interval() -> None:
    """While member 0's breaker refuses, no fail-back attempt; the first request it admits
    makes it."""
    lb_, transport, clock = scripted(
        "ab", "failover", failover_retry_count=1, failback_after_ms=30_000
    )
    transport.script("a", fail(503), answer())
    await lb_.complete(HI)
    lb_.bench("a", 100)
    clock.advance(40)
    assert (await lb_.complete(HI)).backend == "b"
    assert transport.hits("a") == 1
    lb_.unbench("a")
    assert (await lb_.complete(HI)).backend == "a"


async def test_failback_off_with_zero() -> None:
    """failback_after_ms = 0: the index stays where failover left it."""
    lb_, transport, clock = scripted("ab", "failover", failover_retry_count=1, failback_after_ms=0)
    transport.script("a", fail(503), answer())
    await lb_.complete(HI)
    clock.advance(3600)
    assert (await lb_.complete(HI)).backend == "b"


# -- one probe ---------------------------------------------------------------------------------


async def test_slow_probe_stays_the_only_probe() -> None:
    """A 3 s probe with a 400 ms recovery time keeps its slot: others skip the member
    until it finishes; its success closes the breaker."""
    hold = asyncio.Event()
    lb_, transport, clock = scripted(
        "ab",
        circuit_breaker_enabled=True,
        circuit_breaker_failure_threshold=1,
        circuit_breaker_recovery_timeout_ms=400,
        failover_retry_count=1,
    )
    transport.script("a", fail(503), answer("probe answer", hold=hold), answer())
    assert (await lb_.complete(HI)).backend == "b"  # a fails: open for 0.4 s
    await lb_.complete(HI)  # starts at b
    clock.advance(0.5)
    probe = asyncio.create_task(lb_.complete(HI))  # starts at a: the probe
    await transport.wait_for_hits("a", 2)
    clock.advance(3)
    others = [await lb_.complete(HI) for _ in range(4)]
    assert {r.backend for r in others} == {"b"}
    assert transport.hits("a") == 2
    assert lb_.stats()["circuitBreakerStates"]["a"]["state"] == "half-open"
    hold.set()
    assert (await probe).backend == "a"
    assert lb_.stats()["circuitBreakerStates"]["a"]["state"] == "closed"


async def test_dead_probe_releases_after_its_lease() -> None:
    """A probe whose process died (no renewals) frees the slot once its lease runs out."""
    from lbprovider import breaker as brk

    policy = brk.BreakerPolicy(enabled=True, recovery_s=0.4)
    opened = brk.on_failure(brk.BreakerRecord(), 0.0, brk.BreakerPolicy(enabled=True, threshold=1))
    admission, held = brk.admit(opened, 31.0, policy, "dead")
    assert admission is brk.Admission.PROBE
    assert brk.admit(held, 31.0 + brk.PROBE_LEASE_S - 1, policy, "other")[0] is brk.Admission.SKIP
    renewed = brk.renew_probe(held, "dead", 31.0 + brk.PROBE_LEASE_S - 1)
    assert brk.admit(renewed, 31.0 + brk.PROBE_LEASE_S + 1, policy, "x")[0] is brk.Admission.SKIP
    later = 31.0 + 2 * brk.PROBE_LEASE_S
    assert brk.admit(renewed, later, policy, "other")[0] is brk.Admission.PROBE
    assert brk.renew_probe(held, "someone-else", later) == held


# -- hooks -------------------------------------------------------------------------------------


async def test_raising_hook_never_fails_a_request(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in a user hook is logged once and ignored."""

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    clock = FakeClock()
    transport = ScriptedTransport(clock)
    transport.script("a", fail(503))
    provider = make_lb(
        {"a": "http://a.invalid/v1", "b": "http://b.invalid/v1"},
        "roundrobin",
        clock=clock,
        transport=transport,
        on_event=broken,
    )
    with caplog.at_level(logging.WARNING, logger="lbprovider"):
        assert (await provider.complete(HI)).backend == "b"
        assert (await provider.complete(HI)).backend == "b"
    assert sum("hook" in r.getMessage() for r in caplog.records) == 1


# -- across processes ------------------------------------------------------------------------------

DRIVER = """
import asyncio, sys
from lbprovider import LoadBalancingProvider

async def main() -> None:
    result = await LoadBalancingProvider.from_profile(sys.argv[1]).complete(
        [{"role": "user", "content": "hi"}]
    )
    print(result.backend)

asyncio.run(main())
"""


@pytest.mark.slow
def test_failback_probes_once_across_processes(
    write_profile: WriteProfile, isolated: Path, tmp_path: Path
) -> None:
    """Four processes starting together after the interval: exactly one tries member 0."""
    from lbprovider.ledger import Ledger, lb_key
    from lbprovider.policies import LBRecord
    from lbprovider.sim import serve_in_thread
    from lbprovider.state.sqlite import SQLiteStore

    state = tmp_path / "state.db"
    env = {**os.environ, "LBPROVIDER_HOME": str(isolated), "LBPROVIDER_STATE": f"sqlite:///{state}"}
    with serve_in_thread("status=503") as a, serve_in_thread() as b:
        write_profile("a", member(base_url=a.url))
        write_profile("b", member(base_url=b.url))
        # An hour-long interval, and an index away from member 0 for two hours: due now,
        # and not again within the test however slow the machine is.
        write_profile("fo", lb(["a", "b"], failover_retry_count=1, failback_after_ms=3_600_000))
        store = SQLiteStore(state)
        away = LBRecord(sticky=1, away_since=time.time() - 7200)
        Ledger(store).apply({lb_key("fo"): lambda _: away})
        store.close()
        outputs = run_scripts(env, DRIVER, "fo", count=4)
        assert [o.strip() for o, _ in outputs] == ["b"] * 4
        assert a.hits == 1
    proc = subprocess.run(
        [sys.executable, "-m", "lbprovider.cli", "stats", "fo", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["failbacks"] == 0
