"""SPEC §7 v2 across processes, on a real Redis-protocol server (valkey): every process
pointing at the same Redis shares breakers, positions, TPM windows and counts exactly,
and a Redis that goes away never fails a request."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lbprovider.sim import SimServer, serve_in_thread
from lbprovider.testing import ValkeyServer
from tests.conftest import (
    OPEN_AT_FIRST_FAILURE,
    SIM_KEY,
    WriteProfile,
    lb,
    member,
    run_process,
    run_scripts,
)

pytestmark = pytest.mark.slow
redis = pytest.importorskip("redis")

DRIVER = """
import asyncio, sys
from lbprovider import LoadBalancingProvider

async def main() -> None:
    lb = LoadBalancingProvider.from_profile(sys.argv[1])
    for i in range(int(sys.argv[2])):
        result = await lb.complete([{"role": "user", "content": f"request {i}"}])
        print(result.backend, flush=True)

asyncio.run(main())
"""


@pytest.fixture
def env(isolated: Path, valkey: ValkeyServer) -> dict[str, str]:
    """Every child process: the test's home, state in the shared Redis."""
    return {**os.environ, "LBPROVIDER_HOME": str(isolated), "LBPROVIDER_STATE": valkey.url}


@pytest.fixture
def three(write_profile: WriteProfile) -> Iterator[tuple[SimServer, SimServer, SimServer]]:
    """Three healthy backends, members a, b, c."""
    with (
        serve_in_thread("chunks=2") as a,
        serve_in_thread("chunks=2") as b,
        serve_in_thread("chunks=2") as c,
    ):
        for name, server in zip("abc", (a, b, c), strict=True):
            write_profile(name, member(base_url=server.url))
        yield a, b, c


def stats(env: dict[str, str], name: str) -> dict[str, Any]:
    """`lbprovider stats NAME --json`, from yet another process."""
    proc = run_process(env, "stats", name, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_roundrobin_across_processes(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, ...]
) -> None:
    """Six separate processes over three members land two on each."""
    write_profile("rr", lb(["a", "b", "c"], policy="roundrobin"))
    with ThreadPoolExecutor(6) as pool:
        procs = list(pool.map(lambda i: run_process(env, "chat", "-p", "rr", f"hi {i}"), range(6)))
    assert [p.returncode for p in procs] == [0] * 6, [p.stderr for p in procs]
    assert [s.hits for s in three] == [2, 2, 2]
    assert stats(env, "rr")["profileCounts"] == {"a": 2, "b": 2, "c": 2}


def test_parallel_processes_count_exactly(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, ...]
) -> None:
    """Four processes x ten requests in parallel: exactly 40 in every counter."""
    write_profile("rr", lb(["a", "b", "c"], policy="roundrobin"))
    run_scripts(env, DRIVER, "rr", "10", count=4)
    report = stats(env, "rr")
    metrics = report["backendMetrics"]
    assert report["totalRequests"] == 40
    assert sum(m["requests"] for m in metrics.values()) == 40
    assert sum(m["successes"] for m in metrics.values()) == 40
    assert sorted(report["profileCounts"].values()) == [13, 13, 14]
    assert sum(s.hits for s in three) == 40


def test_breaker_opened_by_one_process_is_skipped_by_the_next(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, ...]
) -> None:
    """A breaker opened in one process is open for the next one's first request."""
    a = three[0]
    a.behavior = a.behavior.parse("status=503")
    write_profile("fo", lb(["a", "b"], **OPEN_AT_FIRST_FAILURE))
    write_profile("fo2", lb(["a", "b"], circuit_breaker_enabled=True))  # another LB, same member
    first = run_process(env, "chat", "-p", "fo", "--json", "one")
    assert json.loads(first.stdout)["backend"] == "b"
    assert a.hits == 1
    second = run_process(env, "chat", "-p", "fo2", "--json", "two")
    assert json.loads(second.stdout)["backend"] == "b"
    assert a.hits == 1  # skipped: the breaker belongs to the member, in Redis
    assert stats(env, "fo2")["circuitBreakerStates"]["a"]["state"] == "open"


def test_one_probe_across_processes(
    env: dict[str, str], write_profile: WriteProfile, valkey: ValkeyServer
) -> None:
    """Four processes meeting a half-open breaker at once: exactly one probes. (The
    probe stalls until the first-chunk timeout, fails, and the breaker opens again for
    longer: however slowly the processes start, nobody else probes.)"""
    with serve_in_thread("stall_first_chunk=30") as slow, serve_in_thread() as good:
        write_profile("slow", member(base_url=slow.url))
        write_profile("good", member(base_url=good.url))
        write_profile(
            "rr",
            lb(
                ["slow", "good"],
                policy="roundrobin",
                failover_retry_count=1,
                timeout_ms=2000,
                circuit_breaker_enabled=True,
                circuit_breaker_failure_threshold=1,
            ),
        )
        # The breaker of "slow": open, its recovery time long past — half-open now.
        client = redis.Redis.from_url(valkey.url)
        client.set(
            "lbprovider:breaker:slow",
            json.dumps({"state": "open", "openedAt": 1.0, "recoveryAt": 2.0, "recoveryS": 1.0}),
        )
        client.close()
        run_scripts(env, DRIVER, "rr", "2", count=4)
    assert slow.hits == 1


def test_bench_and_unbench_are_seen_everywhere(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, ...]
) -> None:
    """bench in one process: every other process skips the member; unbench: it serves."""
    a = three[0]
    write_profile("rr", lb(["a", "b"], policy="roundrobin", circuit_breaker_enabled=True))
    assert run_process(env, "bench", "a", "--for", "1h").returncode == 0
    assert stats(env, "rr")["circuitBreakerStates"]["a"]["manual"] is True
    for _ in range(2):
        assert (
            json.loads(run_process(env, "chat", "-p", "rr", "--json", "x").stdout)["backend"] == "b"
        )
    assert a.hits == 0
    assert run_process(env, "unbench", "a").returncode == 0
    assert stats(env, "rr")["circuitBreakerStates"]["a"]["state"] == "closed"
    served = {
        json.loads(run_process(env, "chat", "-p", "rr", "--json", "x").stdout)["backend"]
        for _ in range(2)
    }
    assert served == {"a", "b"}


def test_keys_are_prefixed_expire_and_hold_no_secret(
    env: dict[str, str], write_profile: WriteProfile, valkey: ValkeyServer, three: Any
) -> None:
    """Every key starts with lbprovider:, TPM buckets expire, no key value is a secret."""
    write_profile("fo", lb(["a", "b"]))
    assert run_process(env, "chat", "-p", "fo", "hi").returncode == 0
    client = redis.Redis.from_url(valkey.url)
    keys = sorted(k.decode() for k in client.keys("*"))
    values = b"".join(client.get(k) or b"" for k in keys)
    ttl = client.pttl("lbprovider:tpm:a")
    client.close()
    assert keys and all(k.startswith("lbprovider:") for k in keys)
    assert "lbprovider:tpm:a" in keys and 0 < ttl <= 6 * 60 * 1000
    assert SIM_KEY.encode() not in values and SIM_KEY[:12].encode() not in values


def test_redis_going_away_never_fails_a_request(
    write_profile: WriteProfile, valkey: ValkeyServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed mid-run: requests are still served, one warning; Redis back: the
    store is written again."""
    import asyncio
    import logging

    from lbprovider.provider import LoadBalancingProvider
    from lbprovider.state.redis import RedisStore

    with serve_in_thread() as good, serve_in_thread() as other:
        write_profile("a", member(base_url=good.url))
        write_profile("b", member(base_url=other.url))
        write_profile("fo", lb(["a", "b"]))
        store = RedisStore(valkey.url, reset_timeout_s=0.2)

        async def requests(n: int) -> list[str | None]:
            provider = LoadBalancingProvider.from_profile("fo", store=store)
            return [
                (await provider.complete([{"role": "user", "content": "hi"}])).backend
                for _ in range(n)
            ]

        with caplog.at_level(logging.WARNING, logger="lbprovider"):
            assert asyncio.run(requests(2)) == ["a", "a"]
            valkey.stop()
            assert asyncio.run(requests(5)) == ["a"] * 5
            unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(unreachable) == 1
            valkey.start()
            # The guard lets a call through again after its reset timeout (0.2 s here);
            # requests go on meanwhile, served from memory. Bounded in count and time.
            client = redis.Redis.from_url(valkey.url)
            for _ in range(200):
                asyncio.run(requests(1))
                if client.exists("lbprovider:lb:fo"):
                    break
                client.ping()  # (not a timing assertion: each round is a real request)
            written = client.exists("lbprovider:lb:fo")
            client.close()
        assert written
        store.close()


def test_an_update_never_starts_from_a_value_another_writer_replaced(
    valkey: ValkeyServer,
) -> None:
    """A store applies its updaters to the values it last saw, and the server writes only
    if they are still there: another store's writes, a raw write, a flushed script cache
    and a key only read all reach the next update."""
    import asyncio

    from lbprovider.state.redis import RedisStore

    def inc(value: Any) -> int:
        return (value or 0) + 1

    a, b = RedisStore(valkey.url), RedisStore(valkey.url)
    client = redis.Redis.from_url(valkey.url)
    try:
        assert a.update("n", inc) == 1
        for _ in range(5):
            b.update("n", inc)
        assert a.update("n", inc) == 7  # a last saw 1
        client.set("lbprovider:n", "100")
        client.script_flush()  # as after a server restart: the script is sent again
        assert a.update("n", inc) == 101
        assert b.get_many(["n"]) == {"n": 101}

        async def starts() -> list[dict[str, Any]]:
            # One loop, one link: its second update is checked against what it saw.
            first = await a.aupdate_many({"n": inc}, read=["flag"])
            b.update("flag", lambda _: "open")
            return [first, await a.aupdate_many({"n": inc}, read=["flag"])]

        assert asyncio.run(starts()) == [{"n": 102}, {"n": 103, "flag": "open"}]
    finally:
        client.close()
        a.close()
        b.close()
