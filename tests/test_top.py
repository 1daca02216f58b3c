"""`lbprovider top` (SPEC §8 [v3]) over a SQLite state store, and the recent counts it shows."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from lbprovider import stats, top
from lbprovider.cli import cli
from lbprovider.policies import LBRecord
from lbprovider.sim import SimServer
from lbprovider.state.sqlite import SQLiteStore
from tests.conftest import HI, OPEN_AT_FIRST_FAILURE, WriteProfile, lb, make_lb, member

FLAKY = "flaky-primary-openai"  # 20 characters: whole in the 80-column member column
STEADY = "steady-backup"


def run(*args: str, columns: int = 80) -> tuple[int, str, str]:
    """Invoke the CLI in-process with a terminal of ``columns``."""
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def state_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``LBPROVIDER_STATE`` points at a SQLite file in the test's directory."""
    path = tmp_path / "state.db"
    monkeypatch.setenv("LBPROVIDER_STATE", f"sqlite:///{path}")
    return path


@pytest.fixture
async def recorded(write_profile: WriteProfile, state_db: Path) -> dict[str, Any]:
    """Two load balancers' traffic, recorded in the SQLite store by a `make_lb` provider:
    ``pair`` (3 requests; FLAKY failed once and its breaker opened) and ``other`` (1)."""
    async with SimServer("status=503") as bad, SimServer() as good:
        write_profile(FLAKY, member(base_url=bad.url))
        write_profile(STEADY, member(base_url=good.url))
        write_profile("pair", lb([FLAKY, STEADY], **OPEN_AT_FIRST_FAILURE))
        write_profile("other", lb([STEADY, FLAKY], policy="roundrobin"))
        store = SQLiteStore(state_db)
        servers = {FLAKY: bad, STEADY: good}
        pair = make_lb(servers, name="pair", store=store, **OPEN_AT_FIRST_FAILURE)
        for _ in range(3):
            assert (await pair.complete(HI)).backend == STEADY
        other = make_lb({STEADY: good, FLAKY: bad}, "roundrobin", name="other", store=store)
        await other.complete(HI)
        store.flush()
        store.close()
        return pair.stats()  # type: ignore[no-any-return]


def test_top_once_shows_every_member(recorded: dict[str, Any]) -> None:
    """One frame: every member, its requests and failures of the last 60 s, its breaker
    (open after its failure), its TPM — and no line longer than 80 columns."""
    code, out, err = run("top", "pair", "--once")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out
    row = {n: next(x.split() for x in lines if x.startswith(n)) for n in (FLAKY, STEADY)}
    tpm = f"{recorded['currentTPM'][STEADY]:.0f}"
    # member, req/60s, fail/60s, breaker..., p50/p95, TPM, cache read/write
    assert row[FLAKY][:4] == [FLAKY, "1", "1", "open"]
    assert row[STEADY][:4] == [STEADY, "3", "0", "closed"]
    assert row[STEADY][-2:] == [tpm, "0/0"]
    assert "pair (failover) · last 60 s: 4 attempts, 1 failed" in out
    assert "other" not in out  # NAME shows one load balancer


def test_top_every_load_balancer(recorded: dict[str, Any]) -> None:
    """Without NAME: every load balancer with recorded state, in name order."""
    code, out, err = run("top", "--once")
    assert code == 0, err
    assert out.index("other (roundrobin)") < out.index("pair (failover)")


def test_stats_json_has_recent_counts(recorded: dict[str, Any]) -> None:
    """`stats --json` carries each member's `recent60s` requests and failures."""
    code, out, _ = run("stats", "pair", "--json")
    assert code == 0
    metrics = json.loads(out)["backendMetrics"]
    assert metrics[FLAKY]["recent60s"] == {"requests": 1, "failures": 1}
    assert metrics[STEADY]["recent60s"] == {"requests": 3, "failures": 0}


def test_top_shows_members_without_keys_here(write_profile: WriteProfile, state_db: Path) -> None:
    """A member whose key variable is not set where `top` runs still has its row."""
    write_profile("remote", member(key=None, **{"auth-key-env": "LBPROVIDER_TEST_UNSET_KEY"}))
    write_profile("local", member())
    write_profile("fleet", lb(["remote", "local"]))
    code, out, err = run("top", "fleet", "--once")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[-2:]] == ["remote", "local"]


def test_top_unknown_name(write_profile: WriteProfile, state_db: Path) -> None:
    """An unknown NAME, or a member's: exit 2 with the reason on stderr."""
    write_profile("solo", member())
    code, out, err = run("top", "ghost", "--once")
    assert code == 2 and out == ""
    assert "profile 'ghost' not found" in err
    code, _, err = run("top", "solo", "--once")
    assert code == 2 and "'solo' is a member profile, not a load balancer" in err


def test_top_no_recorded_state(state_db: Path) -> None:
    """Nothing recorded yet: a clear message on stderr, exit 0."""
    code, out, err = run("top", "--once")
    assert code == 0 and out == ""
    assert "no recorded state yet" in err


@pytest.mark.slow
@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_top_closed_pipe(recorded: dict[str, Any], isolated: Path, reader: str) -> None:
    """`top --once | head -1` (or a reader that reads nothing): exit 0, nothing on stderr."""
    env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
    script = textwrap.dedent(
        f"""
        set -o pipefail
        {sys.executable} -m lbprovider.cli top --once | {reader} >/dev/null
        """
    )
    proc = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.slow
def test_top_does_not_import_litellm(recorded: dict[str, Any], isolated: Path) -> None:
    """`top` reads the state store only: no litellm, no SDK."""
    heavy = ("litellm", "openai", "anthropic", "redis")
    probe = (
        "import sys, atexit\n"
        f"atexit.register(lambda: print([m for m in {heavy!r} if m in sys.modules] or 'CLEAN',"
        " file=sys.stderr))\n"
        "from lbprovider.cli import main; main(['top', '--once'])\n"
    )
    env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stderr.strip().endswith("CLEAN"), proc.stderr
    assert STEADY in proc.stdout


# -- the frame and the loop ----------------------------------------------------------------------

NOW = 1_700_000_000.0


def report(members: list[str], **extra: Any) -> dict[str, Any]:
    """A stats report with no traffic, plus ``extra`` top-level keys."""
    built = stats.build_stats(
        profile="lb",
        policy="roundrobin",
        members=members,
        models={},
        lb=LBRecord(),
        metrics={},
        breakers={},
        tpm={},
        now=NOW,
        window_s=60,
    )
    return {**built, **extra}


def render(frame: Any, width: int = 80) -> str:
    """A renderable as plain text at ``width`` columns."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(frame)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_frame_shows_optional_columns_only_with_data() -> None:
    """Headroom, lost hedges, affinity and hedges appear once the report has them."""
    plain = render(top.render_frame([report(["a", "b"])], now=NOW))
    assert "headroom" not in plain and "affinity" not in plain and "hedges" not in plain
    rich = report(["a", "b"], affinityHits=7, affinityMisses=1, hedges=3, hedgeWins=2)
    metrics = rich["backendMetrics"]
    metrics["a"].update(cacheReadTokens=12_345, cacheWriteTokens=678, headroomSkips=4)
    metrics["b"].update(
        hedgesLost=2, rateLimit={"remainingRequests": 40, "remainingTokens": 1500, "resetAt": None}
    )
    out = render(top.render_frame([rich], now=NOW))
    assert "affinity 7 hits / 1 miss · 3 hedges (2 won)" in out
    assert "12.3k/678" in out
    row_a = next(line.split() for line in out.splitlines()[-3:] if line.startswith("a "))
    row_b = next(line.split() for line in out.splitlines()[-3:] if line.startswith("b "))
    assert row_a == ["a", "-", "4", "0"]
    assert row_b == ["b", "40", "req", "/", "1.5k", "tok", "0", "2"]


def test_frame_folds_a_long_member_name() -> None:
    """A member name too long for its column folds onto more lines, never cut."""
    name = "a-very-long-member-name-for-the-groq-llama-3.3-70b-versatile"
    out = render(top.render_frame([report([name, "b"])], now=NOW))
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    lines = out.splitlines()
    first, last = lines.index(next(x for x in lines if x.startswith("member"))), len(lines) - 1
    folded = [line.split()[0] for line in lines[first + 1 : last]]  # the rows before b's
    assert "".join(folded) == name and lines[last].split()[0] == "b"


@pytest.mark.parametrize("terminal", [True, False])
def test_live_loop_redraws_until_ctrl_c(terminal: bool) -> None:
    """The loop reads the state every interval and ends quietly at Ctrl-C."""
    loads: list[float] = []
    sleeps: list[float] = []
    clock = iter([NOW, NOW + 2, NOW + 4])

    def load(now: float) -> list[dict[str, Any]]:
        loads.append(now)
        return [report(["a"])]

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=terminal, color_system=None)
    top.run(load, console=console, interval_s=2, clock=lambda: next(clock), sleep=sleep)
    assert loads == [NOW, NOW + 2, NOW + 4] and sleeps == [2, 2, 2]
    assert "every 2 s, Ctrl-C to quit" in out.getvalue()
    assert "lb (roundrobin)" in out.getvalue()


# -- the recent window in the metrics record -------------------------------------------------------


def counted(*attempts: tuple[float, stats.Outcome]) -> stats.MemberMetrics:
    """A metrics record after attempts at the given times."""
    m = stats.MemberMetrics()
    for at, outcome in attempts:
        m = stats.record_attempt(m, outcome, latency_ms=1, at=at)
    return m


OK, FAIL = stats.Outcome.SUCCESS, stats.Outcome.FAILURE


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1005.0, (2, 1)),
        (1059.0, (2, 1)),  # 59 s after the failure: still counted
        (1069.9, (2, 1)),  # its bucket still overlaps the last 60 s
        (1070.0, (0, 0)),  # a whole minute and a bucket later: gone
    ],
)
def test_recent_counts_cover_the_last_minute(now: float, expected: tuple[int, int]) -> None:
    """Requests and failures are those of the 10-second buckets overlapping the last 60 s."""
    assert counted((1000.0, FAIL), (1009.9, OK)).recent_counts(now) == expected


def test_recent_buckets_are_pruned_on_write() -> None:
    """Each write keeps only the buckets of the last 70 s, so the record stays small."""
    m = counted((1000.0, FAIL), (1015.0, OK), (1015.5, stats.Outcome.TIMEOUT))
    assert m.recent == {100: (1, 1), 101: (2, 1)}  # a timeout is a failure too
    m = stats.record_attempt(m, OK, latency_ms=1, at=1075.0)
    assert m.recent == {101: (2, 1), 107: (1, 0)}  # bucket 100 (1000-1009 s) dropped
    assert m.recent_counts(1075.0) == (3, 1)


def test_recent_counts_round_trip_and_old_records() -> None:
    """The buckets survive the store's JSON; a record written before them reads as empty."""
    m = counted((1000.0, FAIL), (1015.0, OK))
    again = stats.MemberMetrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    old = m.to_dict()
    del old["recent10s"]
    assert stats.MemberMetrics.from_dict(old).recent_counts(1015.0) == (0, 0)
    # an attempt with no time (cancelled, or a caller without a clock) leaves the window alone
    assert stats.record_attempt(m, OK, latency_ms=1).recent == m.recent


def test_breaker_text_counts_down() -> None:
    """An open breaker shows the time left until its recovery; a benched one says so."""
    assert render(top._breaker({"state": "closed"}, NOW)).strip() == "closed"
    opened = {"state": "open", "recoveryAt": (NOW + 90) * 1000}
    assert render(top._breaker(opened, NOW)).strip() == "open 1m"
    assert render(top._breaker({"state": "open", "manual": True}, NOW)).strip() == "benched"
