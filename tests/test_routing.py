"""SPEC §3.1–3.2 over real HTTP: policies, retries, classification, no replay, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import Counter
from typing import Any

import pytest

from lbprovider import policies
from lbprovider.config import Policy
from lbprovider.errors import (
    FailureKind,
    NoBackendAvailableError,
    RequestRejectedError,
    StreamInterruptedError,
)
from lbprovider.events import EventKind
from lbprovider.sim import TOOL_USE_ID, serve
from lbprovider.testing import FakeClock
from tests.conftest import (
    ENGINE_KEY,
    HI,
    METRIC_KEYS,
    SPEC_KEYS,
    TRANSPORT,
    is_anthropic,
    make_lb,
    skip_for_anthropic,
    transport_of,
)

pytestmark = pytest.mark.usefixtures("both_transports")


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def backends_of(lb: Any, n: int) -> list[str | None]:
    """Send n sequential requests; return which member served each."""
    return [(await lb.complete(HI)).backend for _ in range(n)]


# -- round-robin ----------------------------------------------------------------------------


async def test_roundrobin_cycles_and_wraps() -> None:
    """Round-robin starts one step further each request and wraps."""
    async with serve() as a, serve() as b, serve() as c:
        lb = make_lb({"a": a, "b": b, "c": c}, "roundrobin")
        assert await backends_of(lb, 7) == ["a", "b", "c", "a", "b", "c", "a"]
        assert (a.hits, b.hits, c.hits) == (3, 2, 2)


async def test_roundrobin_exact_under_200_concurrent() -> None:
    """200 concurrent requests over 3 members land 67/67/66: the rotation is atomic."""
    async with serve("chunks=1") as a, serve("chunks=1") as b, serve("chunks=1") as c:
        lb = make_lb({"a": a, "b": b, "c": c}, "roundrobin")
        results = await asyncio.gather(*(lb.complete(HI) for _ in range(200)))
        assert sorted(Counter(r.backend for r in results).values()) == [66, 67, 67]
        assert sorted((a.hits, b.hits, c.hits)) == [66, 67, 67]
        assert lb.stats()["totalRequests"] == 200


@pytest.mark.parametrize("fault", ["status=503", "status=429", "refused"])
async def test_roundrobin_fails_over_past_failing_member(fault: str) -> None:
    """A request whose start member fails moves on to the next at once (SPEC §3.1 v2:
    members are interchangeable, so no same-member retry first); no error for the caller."""
    clock = FakeClock()
    async with serve("ok" if fault == "refused" else fault) as a, serve() as b, serve() as c:
        url = f"http://127.0.0.1:{closed_port()}/v1" if fault == "refused" else a
        lb = make_lb({"a": url, "b": b, "c": c}, "roundrobin", clock=clock)
        assert await backends_of(lb, 3) == ["b", "b", "c"]
        assert a.hits == (0 if fault == "refused" else 1)
        assert (b.hits, c.hits) == (2, 1)
        assert clock.slept == []


async def test_content_policy_refusal_ends_the_request() -> None:
    """A content-policy 400 is the answer, with the provider's reason: nobody else is asked."""
    skip_for_anthropic("Anthropic has no content-policy error code (a refusal is a stop_reason)")
    async with serve("status=400,error_code=content_policy_violation") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        with pytest.raises(RequestRejectedError) as info:
            await lb.complete(HI)
        assert "safety system" in str(info.value)
        assert info.value.retryable is False
        assert (a.hits, b.hits) == (1, 0)


async def test_roundrobin_skips_open_breaker() -> None:
    """A member with an open breaker is skipped without a hit, and the skip is counted."""
    async with serve() as a, serve() as b:
        lb = make_lb(
            {"a": a, "b": b}, "roundrobin", clock=FakeClock(), circuit_breaker_enabled=True
        )
        lb.bench("a", 60)
        assert await backends_of(lb, 4) == ["b", "b", "b", "b"]
        assert a.hits == 0
        stats = lb.stats()
        assert stats["backendMetrics"]["a"]["skips"] == 2
        assert stats["circuitBreakerStates"]["a"]["state"] == "open"
        assert stats["circuitBreakerStates"]["a"]["manual"] is True


# -- sticky failover ------------------------------------------------------------------------


async def test_failover_starts_at_first_and_stays() -> None:
    """failover starts at member 0 and keeps using it while it serves."""
    async with serve() as a, serve() as b:
        lb = make_lb({"a": a, "b": b})
        assert await backends_of(lb, 3) == ["a", "a", "a"]
        assert b.hits == 0


async def test_failover_moves_on_and_stays_on_the_new_member() -> None:
    """After a's final failure the sticky index moves to b and stays there when a recovers."""
    async with serve("status=503") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        assert (await lb.complete(HI)).backend == "b"
        assert a.hits == 2
        a.behavior = a.behavior.parse("ok")
        assert await backends_of(lb, 3) == ["b", "b", "b"]
        assert a.hits == 2


async def test_failover_returns_to_zero_after_whole_rotation_fails() -> None:
    """When every member fails, the sticky index goes back to 0 (not left on an exhausted one)."""
    async with serve("status=503") as a, serve("status=500") as b, serve() as c:
        lb = make_lb({"a": a, "b": b, "c": c}, clock=FakeClock())
        assert (await lb.complete(HI)).backend == "c"  # sticky now on c
        c.behavior = c.behavior.parse("status=502")
        with pytest.raises(NoBackendAvailableError) as info:
            await lb.complete(HI)
        assert [f.member for f in info.value.failures] == ["c", "a", "b"]
        assert info.value.retryable
        for s in (a, b, c):
            s.behavior = s.behavior.parse("ok")
        assert (await lb.complete(HI)).backend == "a"


async def test_failover_moves_past_skipped_member() -> None:
    """A benched sticky member is skipped; the member that served becomes sticky."""
    async with serve() as a, serve() as b, serve() as c:
        lb = make_lb({"a": a, "b": b, "c": c})
        lb.bench("a", 60)
        lb.bench("b", 60)
        assert (await lb.complete(HI)).backend == "c"
        lb.unbench("a")
        lb.unbench("b")
        assert (await lb.complete(HI)).backend == "c"


def test_newest_request_rule_unit() -> None:
    """An older request's move never overrides a newer request's move."""
    rec = policies.LBRecord()
    start1, rec = policies.begin(rec, Policy.FAILOVER, 3)
    start2, rec = policies.begin(rec, Policy.FAILOVER, 3)
    assert (start1.ticket, start2.ticket) == (1, 2)
    rec = policies.move_sticky(rec, 2, start2.ticket)
    rec = policies.move_sticky(rec, 1, start1.ticket)
    assert rec.sticky == 2
    start3, rec = policies.begin(rec, Policy.FAILOVER, 3)
    assert start3.index == 2
    assert policies.move_sticky(rec, 0, start3.ticket).sticky == 0


async def test_newest_request_rule_concurrent() -> None:
    """A slow older request that succeeds on a does not drag the index back from b."""
    async with serve("chunks=5,chunk_delay=0.1") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        older = asyncio.create_task(lb.complete(HI))
        await a.wait_for(lambda s: s.hits == 1)
        a.behavior = a.behavior.parse("status=503")
        newer = await lb.complete(HI)
        assert newer.backend == "b"
        assert (await older).backend == "a"
        assert (await lb.complete(HI)).backend == "b"


# -- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "hits"), [(None, 2), (1, 1), (5, 5)])
async def test_retry_count(count: int | None, hits: int) -> None:
    """failover_retry_count attempts on one member (default 2), then the next member."""
    settings = {} if count is None else {"failover_retry_count": count}
    async with serve("status=503") as a, serve() as b:
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b}, clock=clock, **settings)
        result = await lb.complete(HI)
        assert (result.backend, a.hits, result.attempts) == ("b", hits, hits + 1)
        assert result.failover
        assert lb.stats()["backendMetrics"]["a"]["requests"] == hits


async def test_retry_count_cap_100() -> None:
    """The cap of 100 attempts works: 99 failures then a success on the same member."""
    async with serve("fail_first=99,chunks=1") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock(), failover_retry_count=100)
        result = await lb.complete(HI)
        assert (result.backend, a.hits, b.hits, result.attempts) == ("a", 100, 0, 100)


async def test_retry_delay_and_retry_after() -> None:
    """failover_retry_delay_ms is waited between attempts; Retry-After is a minimum."""
    async with serve("status=503") as a, serve("status=429,retry_after=3") as b, serve() as c:
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b, "c": c}, clock=clock, failover_retry_delay_ms=250)
        assert (await lb.complete(HI)).backend == "c"
        assert clock.slept == [0.25, 3.0]


async def test_429_retried_on_same_member_first() -> None:
    """A 429 is retried on the same member before moving on."""
    async with serve("fail_first=1,fail_status=429") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        result = await lb.complete(HI)
        assert (result.backend, a.hits, b.hits) == ("a", 2, 0)


async def test_long_retry_after_moves_on_at_once() -> None:
    """A Retry-After longer than 30 s is not waited out on the same member."""
    async with serve("status=429,retry_after=120") as a, serve() as b:
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b}, clock=clock)
        assert (await lb.complete(HI)).backend == "b"
        assert a.hits == 1 and clock.slept == []


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_auth_errors_move_on_at_once(status: int) -> None:
    """401, 402 and 403 are not retried; they count as breaker failures."""
    async with serve(f"status={status}") as a, serve() as b:
        lb = make_lb(
            {"a": a, "b": b},
            clock=FakeClock(),
            circuit_breaker_enabled=True,
            circuit_breaker_failure_threshold=1,
        )
        assert (await lb.complete(HI)).backend == "b"
        assert a.hits == 1
        assert lb.stats()["circuitBreakerStates"]["a"]["state"] == "open"


@pytest.mark.parametrize(
    "spec",
    [
        "status=400",
        "status=404",
        "status=413",
        "status=422",
        "status=400,error_code=context_length_exceeded",
    ],
)
async def test_request_errors_move_on_without_breaker_failure(spec: str) -> None:
    """Request-specific errors (a context window too: another member may have a larger
    one) move on at once and never count toward the breaker."""
    async with serve(spec) as a, serve() as b:
        lb = make_lb(
            {"a": a, "b": b},
            clock=FakeClock(),
            circuit_breaker_enabled=True,
            circuit_breaker_failure_threshold=1,
        )
        assert (await lb.complete(HI)).backend == "b"
        assert a.hits == 1
        state = lb.stats()["circuitBreakerStates"]["a"]
        assert (state["state"], state["failures"]) == ("closed", 0)


async def test_all_400_raises_not_retryable() -> None:
    """When every member rejects the request itself, that error is raised as not retryable."""
    async with serve("status=400") as a, serve("status=422") as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        with pytest.raises(RequestRejectedError) as info:
            await lb.complete(HI)
        assert info.value.retryable is False
        assert {f.kind for f in info.value.failures} == {FailureKind.REQUEST}
        assert "retrying will not help" in str(info.value)
        assert (a.hits, b.hits) == (1, 1)


async def test_refused_connection_is_network_error() -> None:
    """A refused connection is retried (network errors on by default) and then failed over."""
    async with serve() as dead:
        url = dead.url
    async with serve() as b:
        lb = make_lb({"a": url, "b": b}, clock=FakeClock())
        result = await lb.complete(HI)
        assert (result.backend, result.attempts) == ("b", 3)


async def test_network_errors_not_retried_when_disabled() -> None:
    """failover_on_network_errors=false moves on after one attempt."""
    async with serve() as dead:
        url = dead.url
    async with serve() as b:
        lb = make_lb({"a": url, "b": b}, clock=FakeClock(), failover_on_network_errors=False)
        result = await lb.complete(HI)
        assert (result.backend, result.attempts) == ("b", 2)


# -- after the first chunk ------------------------------------------------------------------


async def test_no_replay_after_first_chunk() -> None:
    """An error mid-stream is raised as is: no failover, no duplicated text."""
    async with serve("drop_after=2,chunks=5") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        got: list[str] = []

        async def consume() -> None:
            async for chunk in lb.stream(HI):
                got.append(chunk.text)

        with pytest.raises(StreamInterruptedError) as info:
            await consume()
        assert info.value.member == "a"
        assert len([t for t in got if t]) == 2
        assert (a.hits, b.hits) == (1, 0)
        metrics = lb.stats()["backendMetrics"]["a"]
        assert (metrics["requests"], metrics["failures"]) == (1, 1)


async def test_caller_cancel_after_first_chunk() -> None:
    """Cancelling mid-stream closes the upstream and is not a backend failure."""
    async with serve("chunks=20,chunk_delay=0.05") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock(), circuit_breaker_enabled=True)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in lb.stream(HI):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.wait_for(lambda s: s.disconnects == 1)
        stats = lb.stats()
        assert stats["backendMetrics"]["a"]["failures"] == 0
        assert stats["circuitBreakerStates"]["a"]["failures"] == 0
        assert b.hits == 0


async def test_caller_cancel_before_first_chunk() -> None:
    """Cancelling while waiting for the first chunk counts nothing against the member."""
    async with serve("stall_first_chunk=30") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock(), circuit_breaker_enabled=True)
        task = asyncio.create_task(lb.complete(HI))
        await a.wait_for(lambda s: s.hits == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.wait_for(lambda s: s.disconnects == 1)
        metrics = lb.stats()["backendMetrics"]["a"]
        assert (metrics["requests"], metrics["failures"], metrics["cancelled"]) == (0, 0, 1)
        assert b.hits == 0


async def test_consumer_stopping_early_closes_upstream() -> None:
    """Breaking out of stream() closes the upstream stream."""
    async with serve("chunks=20,chunk_delay=0.05") as a, serve() as b:
        lb = make_lb({"a": a, "b": b})
        async with contextlib.aclosing(lb.stream(HI)) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    break
        await a.wait_for(lambda s: s.disconnects == 1)
        assert lb.stats()["backendMetrics"]["a"]["successes"] == 1


# -- params, tools, keys ----------------------------------------------------------------------


async def test_params_pass_through_and_member_wins() -> None:
    """Caller kwargs reach the backend; a caller api_key/api_base never overrides the member's."""
    async with serve() as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, keys={"a": "sk-member-a-key-0001"})
        await lb.complete(
            HI,
            temperature=0.3,
            max_tokens=7,
            api_key="sk-caller-key-9999",
            api_base="http://example.invalid",
        )
        body = a.requests[0]
        assert (body["temperature"], body["max_tokens"]) == (0.3, 7)
        assert body["stream"] is True
        if not is_anthropic():
            assert body["stream_options"] == {"include_usage": True}
        assert a.api_keys == ["sk-member-a-key-0001"]


async def test_tool_calls_stream_through() -> None:
    """Tool-call deltas reach the caller and merge into complete()'s tool_calls."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with serve("tool_call") as a, serve() as b:
        lb = make_lb({"a": a, "b": b})
        result = await lb.complete(HI, tools=tools)
        assert result.finish_reason == "tool_calls"
        assert result.tool_calls == [
            {
                "id": TOOL_USE_ID if is_anthropic() else "call_sim_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ]


# -- metrics, stats, events -------------------------------------------------------------------


async def test_stats_after_mixed_run() -> None:
    """Stats have the SPEC §6 shape and add up after failures, timeouts and successes."""
    leaky = f"invalid key {ENGINE_KEY} rejected"
    events: list[Any] = []
    async with (
        serve(f"fail_first=3,error_message={leaky}") as a,
        serve("stall_first_chunk=30") as b,
        serve("prompt_tokens=10,completion_tokens=5") as c,
    ):
        lb = make_lb(
            {"a": a, "b": b, "c": c},
            "roundrobin",
            clock=FakeClock(),
            events=events,
            timeout_ms=100,
            failover_retry_count=1,
            circuit_breaker_enabled=True,
        )
        results = [await lb.complete(HI) for _ in range(4)]
        stats = lb.stats()
    assert set(stats) >= SPEC_KEYS
    assert stats["profileName"] == "lbtest" and stats["policy"] == "roundrobin"
    assert stats["members"] == ["a", "b", "c"]
    assert stats["totalRequests"] == 4
    served = [r.backend for r in results]
    assert stats["profileCounts"] == {n: served.count(n) for n in "abc"}
    assert stats["lastSelected"] == served[-1]
    assert stats["lastSelectedModel"] == f"{transport_of(TRANSPORT['kind'])[0]}/model-{served[-1]}"
    for name, m in stats["backendMetrics"].items():
        assert set(m) >= METRIC_KEYS, name
        assert m["requests"] == m["successes"] + m["failures"]
    assert stats["backendMetrics"]["b"]["timeouts"] == stats["backendMetrics"]["b"]["requests"]
    assert stats["backendMetrics"]["b"]["timeouts"] >= 1
    assert stats["backendMetrics"]["c"]["tokens"] == 15 * served.count("c")
    assert set(stats["circuitBreakerStates"]["a"]) >= {
        "state",
        "failures",
        "openedAt",
        "recoveryAt",
    }
    assert stats["currentTPM"]["c"] == 15 * served.count("c")
    text = json.dumps(stats) + " ".join(str(e) for e in events)
    assert ENGINE_KEY not in text
    kinds = {e.kind for e in events}
    assert {EventKind.ATTEMPT, EventKind.FAILOVER, EventKind.REQUEST} <= kinds


async def test_error_lists_every_member_without_keys() -> None:
    """The exhausted-everything error names each member and reason, and no key."""
    async with (
        serve(f"status=401,error_message=bad key {ENGINE_KEY}") as a,
        serve("status=503") as b,
    ):
        lb = make_lb({"a": a, "b": b}, clock=FakeClock())
        with pytest.raises(NoBackendAvailableError) as info:
            await lb.complete(HI)
        text = str(info.value)
        assert "a: 401" in text and "b: 503" in text
        assert ENGINE_KEY not in text and ENGINE_KEY[-8:] not in text


async def test_reset_clears_counters_not_breakers() -> None:
    """reset_stats zeroes counters and keeps breaker state."""
    async with serve("status=503") as a, serve() as b:
        lb = make_lb(
            {"a": a, "b": b},
            clock=FakeClock(),
            circuit_breaker_enabled=True,
            circuit_breaker_failure_threshold=1,
        )
        await lb.complete(HI)
        lb.reset_stats()
        stats = lb.stats()
        assert stats["totalRequests"] == 0
        assert stats["backendMetrics"]["a"]["requests"] == 0
        assert stats["circuitBreakerStates"]["a"]["state"] == "open"


async def test_start_reads_only_the_likely_members() -> None:
    """A request's start reads a few members' records, not all of them, and a member
    outside that read is still admitted on its own record."""
    from lbprovider.ledger import Key

    urls = {f"m{i}": "http://127.0.0.1:9/v1" for i in range(50)}
    provider = make_lb(urls, "roundrobin")
    selection = provider._router.selection
    start, known = await selection.start()
    read = {k.name for k in known if isinstance(k, Key) and k.kind.name == "breaker"}
    assert len(read) <= 4 and provider.config.members[start.index].name in read
    far = provider.config.members[(start.index + 25) % 50]
    assert far.name not in read
    admitted = await selection.admit(far, known=known)
    assert not admitted.skipped
