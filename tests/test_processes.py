"""Real separate processes sharing one state file (SPEC §7): the CLI as a plugin host uses it.

Every `llm` or `lbprovider` invocation is a new process; these tests start real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import WriteProfile, lb, member, run_process

pytestmark = pytest.mark.slow

DRIVER = """
import asyncio, sys
from lbprovider import LoadBalancingProvider

async def main() -> None:
    lb = LoadBalancingProvider.from_profile(sys.argv[1])
    for i in range(int(sys.argv[2])):
        await lb.complete([{"role": "user", "content": f"request {i}"}])

asyncio.run(main())
"""


@pytest.fixture
def env(isolated: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of every child process: the test's home and one state file."""
    (tmp_path / "shared").mkdir(exist_ok=True)
    return {
        **os.environ,
        "LBPROVIDER_HOME": str(isolated),
        "LBPROVIDER_STATE": f"sqlite:///{tmp_path / 'shared' / 'state.db'}",
    }


def stats(env: dict[str, str], name: str) -> dict[str, object]:
    """`lbprovider stats NAME --json`, from yet another process."""
    proc = run_process(env, "stats", name, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def three() -> Iterator[tuple[SimServer, SimServer, SimServer]]:
    """Three healthy backends on their own loops."""
    with (
        serve_in_thread("chunks=2") as a,
        serve_in_thread("chunks=2") as b,
        serve_in_thread("chunks=2") as c,
    ):
        yield a, b, c


def write_members(write_profile: WriteProfile, servers: tuple[SimServer, ...]) -> None:
    """Member profiles a, b, c for the servers."""
    for name, server in zip("abc", servers, strict=False):
        write_profile(name, member(base_url=server.url))


def test_roundrobin_across_processes(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, SimServer, SimServer]
) -> None:
    """Six separate `lbprovider chat` processes over three members land two on each."""
    write_members(write_profile, three)
    write_profile("rr", lb(["a", "b", "c"], policy="roundrobin"))
    with ThreadPoolExecutor(6) as pool:
        procs = list(pool.map(lambda i: run_process(env, "chat", "-p", "rr", f"hi {i}"), range(6)))
    assert [p.returncode for p in procs] == [0] * 6, [p.stderr for p in procs]
    assert [s.hits for s in three] == [2, 2, 2]
    report = stats(env, "rr")
    assert report["profileCounts"] == {"a": 2, "b": 2, "c": 2}
    assert report["totalRequests"] == 6


def test_sticky_failover_across_processes(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, SimServer, SimServer]
) -> None:
    """After a failed in one process, the next process starts at b."""
    a, b, _ = three
    write_members(write_profile, three)
    write_profile("fo", lb(["a", "b", "c"], failover_retry_count=1))
    a.behavior = a.behavior.parse("status=503")
    first = run_process(env, "chat", "-p", "fo", "--json", "one")
    assert json.loads(first.stdout)["backend"] == "b"
    a.behavior = a.behavior.parse("ok")
    second = run_process(env, "chat", "-p", "fo", "--json", "two")
    assert json.loads(second.stdout)["backend"] == "b"
    assert (a.hits, b.hits) == (1, 2)


def test_breaker_across_processes(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, SimServer, SimServer]
) -> None:
    """A breaker opened in one process is open in the next (and in `stats`)."""
    a, _b, _ = three
    write_members(write_profile, three)
    write_profile(
        "rr2",
        lb(
            ["a", "b"],
            policy="roundrobin",
            failover_retry_count=1,
            circuit_breaker_enabled=True,
            circuit_breaker_failure_threshold=1,
            # Far longer than three cold processes can take on any machine: the breaker
            # must still be open for the third, however slow the machine is.
            circuit_breaker_recovery_timeout_ms=86_400_000,
            circuit_breaker_max_recovery_timeout_ms=86_400_000,
        ),
    )
    a.behavior = a.behavior.parse("status=503")
    outcomes = [
        json.loads(run_process(env, "chat", "-p", "rr2", "--json", "x").stdout)["backend"]
        for _ in range(3)
    ]
    assert outcomes == ["b", "b", "b"]
    assert a.hits == 1  # the third process started at a and skipped it: breaker open
    state = stats(env, "rr2")["circuitBreakerStates"]["a"]  # type: ignore[index]
    assert state["state"] == "open"


def test_parallel_processes_lose_no_count(
    env: dict[str, str], write_profile: WriteProfile, three: tuple[SimServer, SimServer, SimServer]
) -> None:
    """N processes x M requests in parallel leave exactly N x M in every counter."""
    n, m = 4, 10
    write_members(write_profile, three)
    write_profile("rr3", lb(["a", "b", "c"], policy="roundrobin"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, "rr3", str(m)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "database is locked" not in err
    report = stats(env, "rr3")
    metrics = report["backendMetrics"]
    assert report["totalRequests"] == n * m
    assert sum(v["requests"] for v in metrics.values()) == n * m  # type: ignore[attr-defined]
    assert sum(report["profileCounts"].values()) == n * m  # type: ignore[attr-defined]
    assert sum(s.hits for s in three) == n * m
    assert sorted(report["profileCounts"].values()) == [13, 13, 14]  # type: ignore[attr-defined]


def test_corrupt_state_file_warns_and_serves(
    env: dict[str, str],
    write_profile: WriteProfile,
    three: tuple[SimServer, SimServer, SimServer],
    tmp_path: Path,
) -> None:
    """A corrupt state file: a clear warning, and the request is still served."""
    write_members(write_profile, three)
    write_profile("fo", lb(["a", "b"]))
    state = tmp_path / "shared" / "state.db"
    state.write_bytes(b"\x00garbage" * 512)
    proc = run_process(env, "chat", "-p", "fo", "hello")
    assert proc.returncode == 0
    assert "Hello from the simulated backend." in proc.stdout
    assert f"state file {state} is unusable" in proc.stderr
    assert three[0].hits == 1


def _read_only_runner() -> tuple[str, ...]:
    """How to run a child that cannot write a 0555 directory (root ignores modes)."""
    if os.geteuid() != 0:
        return ()
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("running as root without unshare: cannot make a directory read-only")
    probe = subprocess.run(
        [unshare, "--user", "--map-user=65534", "true"], check=False, capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("running as root and user namespaces are unavailable")
    # In a new user namespace root is an ordinary user: directory modes apply again.
    return (unshare, "--user", "--map-user=65534")


def test_read_only_state_dir_warns_and_serves(
    env: dict[str, str],
    write_profile: WriteProfile,
    three: tuple[SimServer, SimServer, SimServer],
    tmp_path: Path,
) -> None:
    """A read-only state directory: a clear warning, and the request is still served."""
    prefix = _read_only_runner()
    write_members(write_profile, three)
    write_profile("fo", lb(["a", "b"]))
    ro = tmp_path / "shared"
    ro.chmod(0o555)
    try:
        proc = run_process(env, "chat", "-p", "fo", "hello", prefix=prefix)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert "Hello from the simulated backend." in proc.stdout
    assert "is unusable" in proc.stderr and "keeping state in memory" in proc.stderr
    assert not list(ro.iterdir())


def test_demo_runs_and_leaves_nothing(tmp_path: Path) -> None:
    """`lbprovider demo --json` exits 0, reports both profiles naming every member, cleans up."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "LBPROVIDER_HOME": str(tmp_path / "home")}
    proc = run_process(env, "demo", "--json", "--requests", "6")
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(proc.stdout)
    assert [r["profileName"] for r in reports] == ["demo-failover", "demo-roundrobin"]
    for report in reports:
        assert set(report["members"]) == {"healthy", "flaky", "stalled"}
        assert report["totalRequests"] == 6
        assert sum(report["profileCounts"].values()) == 6
    failover = reports[0]
    assert failover["backendMetrics"]["stalled"]["timeouts"] >= 1
    assert "demo-failover: 6 of 6 requests served" in proc.stderr
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "home").exists()
