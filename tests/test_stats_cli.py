"""`lbprovider stats`, `bench` and `unbench` (SPEC §6, §8) over the default SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from lbprovider.cli import cli, parse_duration
from lbprovider.errors import ConfigError
from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import METRIC_KEYS, SPEC_KEYS, WriteProfile, lb, member

pytest.importorskip("litellm")

BREAKER_KEYS = {"state", "failures", "openedAt", "recoveryAt"}


def run(*args: str) -> tuple[int, str, str]:
    """Invoke the CLI in-process."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def served(write_profile: WriteProfile) -> Iterator[tuple[SimServer, SimServer]]:
    """Profiles over a failing and a healthy backend, after three chat requests."""
    with serve_in_thread("status=503") as bad, serve_in_thread() as good:
        write_profile("bad", member(base_url=bad.url))
        write_profile("good", member(base_url=good.url))
        write_profile(
            "pair", lb(["bad", "good"], failover_retry_count=1, circuit_breaker_enabled=True)
        )
        write_profile("other", lb(["good", "bad"], policy="roundrobin"))
        for _ in range(3):
            assert run("chat", "-p", "pair", "hi")[0] == 0
        yield bad, good


def test_stats_json_shape(served: tuple[SimServer, SimServer]) -> None:
    """`stats NAME --json` is one object with the SPEC §6 keys and the recorded traffic."""
    code, out, _ = run("stats", "pair", "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report) >= SPEC_KEYS
    assert report["members"] == ["bad", "good"]
    assert report["totalRequests"] == 3
    assert report["lastSelected"] == "good"
    assert report["lastSelectedModel"] == "openai/sim-model"
    assert report["profileCounts"] == {"bad": 0, "good": 3}
    for name in ("bad", "good"):
        assert set(report["backendMetrics"][name]) >= METRIC_KEYS
        assert set(report["circuitBreakerStates"][name]) >= BREAKER_KEYS
        assert isinstance(report["currentTPM"][name], int | float)
    assert report["backendMetrics"]["bad"]["failures"] == 1  # sticky moved to good
    assert report["backendMetrics"]["good"]["successes"] == 3
    assert report["circuitBreakerStates"]["bad"]["failures"] == 1


def test_stats_all_profiles(served: tuple[SimServer, SimServer]) -> None:
    """With no NAME: every profile with recorded state (JSON list, or tables)."""
    run("chat", "-p", "other", "hi")
    code, out, _ = run("stats", "--json")
    assert code == 0
    assert [r["profileName"] for r in json.loads(out)] == ["other", "pair"]
    code, out, _ = run("stats")
    assert code == 0
    assert "pair (failover)" in out and "other (roundrobin)" in out
    assert "bad" in out and "good" in out and "closed" in out


def test_stats_reset(served: tuple[SimServer, SimServer]) -> None:
    """--reset clears counters but keeps breakers."""
    code, out, err = run("stats", "pair", "--reset", "--json")
    assert code == 0 and "reset counters of pair" in err
    report = json.loads(out)
    assert report["totalRequests"] == 0
    assert report["backendMetrics"]["good"]["requests"] == 0
    assert report["circuitBreakerStates"]["bad"]["failures"] == 1


def test_stats_empty_and_unknown(write_profile: WriteProfile) -> None:
    """No recorded state is not an error; an unknown NAME is (exit 2)."""
    code, _out, err = run("stats")
    assert code == 0 and "no recorded state" in err
    assert run("stats", "--json")[1].strip() == "[]"
    assert run("stats", "ghost")[0] == 2


V3_MEMBER_KEYS = {"cacheReadTokens", "cacheWriteTokens", "headroomSkips", "hedgesLost"}
V3_PROFILE_KEYS = {"affinityHits", "affinityMisses", "hedges", "hedgeWins", "panicProbes"}


def test_v3_counters_present_with_zero_before_anything(write_profile: WriteProfile) -> None:
    """SPEC §6 [v3]: the cache, headroom, hedge, affinity and panic counters are 0 at first."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("fo", lb(["a", "b"]))
    code, out, _ = run("stats", "fo", "--json")
    assert code == 0
    report = json.loads(out)
    assert {k: report[k] for k in V3_PROFILE_KEYS} == dict.fromkeys(V3_PROFILE_KEYS, 0)
    for name in ("a", "b"):
        metrics = report["backendMetrics"][name]
        assert {k: metrics[k] for k in V3_MEMBER_KEYS} == dict.fromkeys(V3_MEMBER_KEYS, 0)


def test_cache_tokens_are_counted(write_profile: WriteProfile) -> None:
    """A member reporting cached prompt tokens has them counted in cacheReadTokens."""
    with serve_in_thread("cached_tokens=9") as cached:
        write_profile("a", member(cached.url))
        write_profile("b", member(cached.url))
        write_profile("fo", lb(["a", "b"]))
        assert run("chat", "-p", "fo", "hi")[0] == 0
        assert run("chat", "-p", "fo", "hi")[0] == 0
    report = json.loads(run("stats", "fo", "--json")[1])
    assert report["backendMetrics"]["a"]["cacheReadTokens"] == 18


def test_bench_and_unbench(served: tuple[SimServer, SimServer]) -> None:
    """bench opens a member's breaker by hand (marked benched); requests skip it; unbench."""
    _bad, good = served
    code, out, _ = run("bench", "good", "--for", "5m")
    assert code == 0 and out.startswith("benched good until ")
    state = json.loads(run("stats", "pair", "--json")[1])["circuitBreakerStates"]["good"]
    assert (state["state"], state["manual"]) == ("open", True)
    assert state["recoveryAt"] - state["openedAt"] == 300_000
    hits = good.hits
    assert run("chat", "-p", "other", "hi")[0] == 1  # good benched, bad failing
    assert good.hits == hits
    assert run("stats")[1].count("(benched)") >= 1
    code, out, _ = run("unbench", "good")
    assert code == 0 and out.strip() == "unbenched good"
    assert run("chat", "-p", "other", "hi")[0] == 0
    state = json.loads(run("stats", "pair", "--json")[1])["circuitBreakerStates"]["good"]
    assert (state["state"], state["manual"]) == ("closed", False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "pair", "--for", "5m"], "is a load balancer"),
        (["bench", "ghost", "--for", "5m"], "'ghost' not found"),
        (["bench", "good", "--for", "soon"], "cannot read duration"),
        (["unbench", "ghost"], "'ghost' not found"),
    ],
)
def test_bench_bad_input(
    served: tuple[SimServer, SimServer], args: list[str], message: str
) -> None:
    """bench/unbench refuse what is not a member, and durations they cannot read."""
    code, _, err = run(*args)
    assert code == 2 and message in err


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations read as seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "0", "-5m"])
def test_parse_duration_errors(text: str) -> None:
    """Unreadable or empty durations are bad input."""
    with pytest.raises(ConfigError):
        parse_duration(text)
