"""Bad input of every kind gets a clear answer (SPEC §2, §2.1, §3.2 item 5, §8 v2).

A corpus of bad profiles, arguments and environments, each checked the same way: the
exit code, no traceback, the file and the field in the message, nothing rewritten, and
no key (nor its first 12 characters) in any output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lbprovider.cli import cli
from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import SIM_KEY, WriteProfile, lb, member, run_process

KEY = "sk-live-0123456789abcdefSECRET"
JARGON = ("Input should", "valid tuple", "instance of", "NoneType", "Traceback")


def run(*args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    """`lbprovider ARGS` in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an uncaught exception is a bug: show it
    return result.exit_code, result.stdout, result.stderr


def no_secret(*outputs: str, secret: str = KEY) -> None:
    """Neither the secret nor its first 12 characters in any output."""
    for text in outputs:
        assert secret not in text and secret[:12] not in text, text


@pytest.fixture
def sim() -> Iterator[SimServer]:
    """One healthy backend."""
    with serve_in_thread() as server:
        yield server


# -- bad profiles ------------------------------------------------------------------------

DEEP = '{"version": 1, "provider": "openai", "model": "m", "x": ' + "[" * 2000 + "]" * 2000 + "}"

BAD_FILES: dict[str, tuple[str, str, str]] = {
    # name: (file content, what the message says, the field it names or "")
    "truncated": ('{"version": 1, "provider": "openai", "model": ', "line 1 column", ""),
    "deep": (DEEP, "nested too deeply", ""),
    "duplicate": (
        '{"version": 1, "provider": "openai", "model": "a", "model": "b"}',
        "'model' appears twice",
        "",
    ),
    "not-an-object": ("[1, 2]", "must be a JSON object", "(top level)"),
    "unknown-provider": (
        json.dumps({"version": 1, "provider": "opnai", "model": "m"}),
        "unknown provider 'opnai' (did you mean 'openai'?)",
        "provider",
    ),
    "key-as-list": (
        json.dumps(member(key=None, **{"auth-key": [KEY]})),
        "must be a non-empty string",
        "ephemeralSettings.auth-key",
    ),
    "string-number": (
        json.dumps(lb(["x", "y"], timeout_ms="8000")),
        "must be a whole number",
        "ephemeralSettings.timeout_ms",
    ),
    "settings-list": (
        json.dumps({**lb(["x", "y"]), "ephemeralSettings": [1]}),
        "must be a JSON object",
        "ephemeralSettings",
    ),
    "codes-string": (
        json.dumps(lb(["x", "y"], failover_status_codes="429")),
        "must be a JSON list",
        "ephemeralSettings.failover_status_codes",
    ),
    "policy-null": (
        json.dumps({**lb(["x", "y"]), "policy": None}),
        "null is not allowed here",
        "policy",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_profile_file(case: str, write_profile: WriteProfile) -> None:
    """Each bad file: exit 2 from validate and show-then-use, no traceback, no jargon,
    the file and field named, the file untouched, no key shown."""
    content, says, field = BAD_FILES[case]
    path = write_profile(case, content)
    before = path.read_bytes()
    for args in (("profiles", "validate", case), ("chat", "-p", case, "hi")):
        code, out, err = run(*args)
        assert code == 2, (args, out, err)
        assert says in err, err
        assert str(path) in err
        if field:
            assert f"{field}:" in err, err
        assert not any(word in err for word in JARGON), err
        no_secret(out, err)
    assert path.read_bytes() == before


def test_bom_is_accepted(write_profile: WriteProfile, sim: SimServer) -> None:
    """A profile saved with a UTF-8 byte-order mark reads like any other."""
    path = write_profile("bom", "")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(member(base_url=sim.url)).encode())
    code, out, _ = run("profiles", "validate", "bom")
    assert code == 0 and "ok" in out


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling"])
def test_profile_path_that_is_not_a_file(kind: str, profiles_dir: Path) -> None:
    """A directory, a FIFO or a dangling symlink says what it is: never "not found",
    never a hang."""
    path = profiles_dir / "odd.json"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(profiles_dir / "gone.json")
    code, _, err = run("profiles", "show", "odd")
    says = {
        "directory": "is a directory",
        "fifo": "not a regular file",
        "dangling": "which does not exist",
    }
    assert code == 2 and says[kind] in err and str(path) in err
    assert "not found" not in err


@pytest.mark.parametrize("kind", ["fifo", "directory", "pasted-key"])
def test_bad_keyfile(kind: str, write_profile: WriteProfile, tmp_path: Path) -> None:
    """An auth-keyfile that is a FIFO (which would block), a directory, or a key pasted
    where a path belongs: a clear warning (the key cannot be resolved, SPEC §2.2), and a
    pasted key is not echoed."""
    if kind == "fifo":
        value = str(tmp_path / "key.fifo")
        os.mkfifo(value)
    elif kind == "directory":
        value = str(tmp_path)
    else:
        value = KEY
    write_profile("m", member(key=None, **{"auth-keyfile": value}))
    write_profile("m2", member())
    write_profile("duo", lb(["m", "m2"], policy="roundrobin"))
    code, out, err = run("profiles", "validate", "m")
    assert code == 0 and "warn   m: key cannot be resolved now" in err, err
    assert "ephemeralSettings.auth-keyfile" in err
    if kind == "pasted-key":
        no_secret(out, err)
        assert "redacted" in err
    else:
        assert value in err
    code, out, err = run("profiles", "validate", "duo")  # left out, the rest serve
    assert code == 0 and "'m' left out" in err
    no_secret(out, err)


def test_name_too_long(profiles_dir: Path) -> None:
    """A 250-character name is refused cleanly (never an OS error about the file name)."""
    code, _, err = run("profiles", "show", "a" * 250)
    assert code == 2 and "at most 100 characters" in err


# -- secrets, every way they reach a profile --------------------------------------------


def secret_member(way: str, url: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A member carrying KEY one way, and the environment it needs."""
    env: dict[str, str] = {}
    if way == "auth-key":
        return member(base_url=url, key=KEY), env
    if way == "auth-keyfile":
        path = tmp_path / "key.txt"
        path.write_text(KEY + "\n")
        return member(base_url=url, key=None, **{"auth-keyfile": str(path)}), env
    if way == "auth-key-env":
        env["SECRET_FOR_TEST"] = KEY
        return member(base_url=url, key=None, **{"auth-key-env": "SECRET_FOR_TEST"}), env
    if way == "extra_headers":
        data = member(base_url=url, key=None)
        data["modelParams"] = {"extra_headers": {"Authorization": f"Bearer {KEY}"}}
        return data, env
    host = url.removeprefix("http://")
    return member(base_url=f"http://user:{KEY}@{host}?api_key={KEY}", key=None), env


@pytest.mark.parametrize(
    "way", ["auth-key", "auth-keyfile", "auth-key-env", "extra_headers", "base-url"]
)
def test_no_key_anywhere(
    way: str,
    write_profile: WriteProfile,
    tmp_path: Path,
    isolated: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """show, validate, errors (a backend quoting the key back), -v logs and stats (table
    and JSON) never contain a key or its first 12 characters, and neither does the state."""
    with serve_in_thread("status=401,echo_key") as quoting:
        data, env = secret_member(way, quoting.url, tmp_path)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        write_profile("secret", data)
        write_profile("other", member(base_url=quoting.url, key=SIM_KEY))
        write_profile("duo", lb(["secret", "other"], failover_retry_count=1))
        outputs: list[str] = []
        for args in (
            ("profiles", "show", "secret"),
            ("profiles", "validate", "secret", "duo"),
            ("chat", "-p", "duo", "-v", "hi"),
            ("chat", "-p", "duo", "--json", "hi"),
            ("stats", "duo"),
            ("stats", "duo", "--json"),
        ):
            _, out, err = run(*args)
            outputs += [out, err]
        assert quoting.hits >= 2  # the key did reach the backend, which quoted it back
    from lbprovider.state import reset_default_store

    reset_default_store()
    state = (isolated / "state.db").read_bytes()
    no_secret(*outputs, state.decode("latin-1"))


# -- requests that cannot be sent as given ------------------------------------------------


def test_prompt_that_is_not_text_blames_no_member(
    write_profile: WriteProfile, sim: SimServer
) -> None:
    """A prompt with bytes that are not UTF-8 is refused (exit 2) before any member is
    asked: no hit, no failure, no breaker."""
    write_profile("a", member(base_url=sim.url))
    write_profile("b", member(base_url=sim.url))
    write_profile("duo", lb(["a", "b"], circuit_breaker_enabled=True))
    code, _, err = run("chat", "-p", "duo", "caf\udce9")  # what argv gives for b"caf\xe9"
    assert code == 2 and "not valid text" in err
    code, _, err = run("chat", "-p", "duo", stdin=b"caf\xe9\n")
    assert code == 2 and "not UTF-8" in err
    assert sim.hits == 0
    code, out, _ = run("stats", "duo", "--json")
    report = json.loads(out)
    assert all(m["failures"] == 0 for m in report["backendMetrics"].values())


# -- bad arguments and environments -------------------------------------------------------


def test_absurd_bench_duration(write_profile: WriteProfile) -> None:
    """bench --for 1000000000000h: exit 2 naming --for (never an overflow traceback)."""
    write_profile("a", member())
    code, _, err = run("bench", "a", "--for", "1000000000000h")
    assert code == 2 and "--for" in err


def test_bench_says_the_date(write_profile: WriteProfile) -> None:
    """bench says when the member comes back, date included."""
    write_profile("a", member())
    code, out, _ = run("bench", "a", "--for", "48h")
    assert code == 0
    assert len(out.split("until ")[1].split()[0]) == len("2026-12-01")


def test_home_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LBPROVIDER_HOME pointing at a file: exit 2 with what to do, for edits and chat."""
    home = tmp_path / "home-file"
    home.write_text("not a directory")
    monkeypatch.setenv("LBPROVIDER_HOME", str(home))
    # Members in two directories: a new load balancer would go to the home.
    monkeypatch.setenv(
        "LBPROVIDER_PROFILES_PATH", os.pathsep.join([str(tmp_path / "profiles"), str(tmp_path)])
    )
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a.json").write_text(json.dumps(member()))
    (tmp_path / "b.json").write_text(json.dumps(member()))
    (tmp_path / "profiles" / "y.json").write_text(json.dumps(lb(["a", "b"])))
    code, _, err = run("profiles", "save-lb", "x", "a", "b", "--policy", "failover")
    assert code == 2 and "LBPROVIDER_HOME" in err
    code, _, err = run("chat", "-p", "y", "hi")  # its state store would live in the home
    assert code == 2 and "LBPROVIDER_HOME" in err
    assert home.read_text() == "not a directory"


def test_state_directory_that_does_not_exist(
    write_profile: WriteProfile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: SimServer
) -> None:
    """sqlite:/// in a missing directory: exit 2, and the directory is not created."""
    write_profile("a", member(base_url=sim.url))
    write_profile("b", member(base_url=sim.url))
    write_profile("duo", lb(["a", "b"]))
    monkeypatch.setenv("LBPROVIDER_STATE", f"sqlite:///{tmp_path}/missing/dir/state.db")
    code, _, err = run("chat", "-p", "duo", "hi")
    assert code == 2 and "LBPROVIDER_STATE" in err
    assert not (tmp_path / "missing").exists()


def test_stats_on_a_corrupt_state_file(
    write_profile: WriteProfile, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stats on a corrupt state file: exit 2 saying so (not "no recorded state yet")."""
    write_profile("a", member())
    write_profile("b", member())
    write_profile("duo", lb(["a", "b"]))
    state = isolated / "state.db"
    state.write_bytes(b"\x00garbage" * 512)
    code, _, err = run("stats")
    assert code == 2 and "LBPROVIDER_STATE" in err and "no recorded state" not in err


def test_bench_on_a_corrupt_state_file(write_profile: WriteProfile, isolated: Path) -> None:
    """bench/unbench that cannot reach the shared state: exit 2, the file untouched (a
    bench only this process would see is no bench)."""
    write_profile("a", member())
    state = isolated / "state.db"
    state.write_bytes(b"\x00garbage" * 512)
    for args in (("bench", "a", "--for", "5m"), ("unbench", "a")):
        code, _, err = run(*args)
        assert code == 2 and "cannot be written: nothing was changed" in err, err
    assert state.read_bytes() == b"\x00garbage" * 512


def test_sim_port_in_use() -> None:
    """sim --port on a busy port: exit 2 naming --port."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run("sim", "--port", str(port), "--for", "1")
    assert code == 2 and "--port" in err and "in use" in err.lower()


def test_sim_says_what_it_does() -> None:
    """The sim names only the behaviour that differs from the defaults."""
    from lbprovider.sim import Behavior

    assert str(Behavior.parse("status=503,retry_after=2")) == "status=503,retry_after=2.0"
    assert str(Behavior()) == "ok"


def test_stats_help_is_for_users() -> None:
    """stats --help speaks of the report, not of a spec section users do not have."""
    code, out, _ = run("stats", "--help")
    assert code == 0 and "SPEC" not in out


# -- CLI habits --------------------------------------------------------------------------


@pytest.mark.slow
def test_verbose_logs_go_to_stderr_once(
    write_profile: WriteProfile, isolated: Path, sim: SimServer
) -> None:
    """chat --json -v: stdout is only the JSON; each log line appears once, on stderr."""
    with serve_in_thread("status=503") as bad:
        write_profile("bad", member(base_url=bad.url, transport="litellm"))
        write_profile("good", member(base_url=sim.url))
        write_profile("duo", lb(["bad", "good"], failover_retry_count=1))
        env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
        proc = run_process(env, "chat", "-p", "duo", "--json", "-v", "hi")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backend"] == "good"
    failover_lines = [line for line in proc.stderr.splitlines() if "failover bad" in line]
    assert len(failover_lines) == 1, proc.stderr


@pytest.mark.slow
def test_ctrl_c_exits_130(write_profile: WriteProfile, isolated: Path) -> None:
    """Ctrl-C during a request: exit 130, no traceback."""
    with serve_in_thread("stall_first_chunk=60") as slow:
        write_profile("a", member(base_url=slow.url))
        write_profile("b", member(base_url=slow.url))
        write_profile("duo", lb(["a", "b"]))
        env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbprovider.cli", "chat", "-p", "duo", "hi"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        slow.wait_for_sync(lambda s: s.hits >= 1, timeout=60)  # the request is in flight
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err


@pytest.fixture
def thirty_served(write_profile: WriteProfile, isolated: Path) -> Iterator[dict[str, str]]:
    """30 members on one sim, a failover LB `big` over them with one served request on
    record; the environment of a process that sees them."""
    env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
    with serve_in_thread() as server:
        for i in range(30):
            write_profile(f"m{i}", member(server.url))
        write_profile("big", lb([f"m{i}" for i in range(30)]))
        served = run_process(env, "chat", "-p", "big", "hi")
        assert served.returncode == 0, served.stderr
        yield env


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    ["stats", "stats big", "stats big --json", "profiles show big", "profiles list"],
)
def test_closed_pipe_ends_quietly(thirty_served: dict[str, str], command: str) -> None:
    """Output into a pipe whose reader has gone: exit 0, no word about it on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the first write, so every write meets EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lbprovider.cli", *command.split()],
            env=thirty_served,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    # `profiles show` names its file on stderr by design; nothing else may appear.
    assert proc.stderr in (
        "",
        f"# {Path(thirty_served['LBPROVIDER_HOME'], 'profiles', 'big.json')}\n",
    )


def test_stats_table_reads_at_80_columns(write_profile: WriteProfile) -> None:
    """At 80 columns nothing is cut: member names and breaker states are whole."""
    from rich.console import Console

    from lbprovider.report import render_stats

    names = ["primary-openai", "backup-groq-llama", "local-ollama"]
    report = {
        "profileName": "coding",
        "policy": "failover",
        "members": names,
        "totalRequests": 1,
        "failbacks": 0,
        "lastSelected": names[1],
        "lastSelectedModel": "openai/llama-3.3-70b",
        "profileCounts": {n: 1 for n in names},
        "backendMetrics": {
            n: {
                "requests": 123,
                "successes": 120,
                "failures": 3,
                "timeouts": 1,
                "interruptions": 1,
                "skips": 12,
                "tokens": 123456,
                "avgLatencyMs": 1234.5,
                "firstChunkP50Ms": 345.0,
                "firstChunkP95Ms": 2345.0,
            }
            for n in names
        },
        "circuitBreakerStates": {
            names[0]: {"state": "open", "failures": 3, "recoveryAt": 1_800_000_000_000},
            names[1]: {"state": "half-open", "failures": 0, "recoveryAt": 1},
            names[2]: {"state": "closed", "failures": 1, "recoveryAt": None, "manual": False},
        },
        "currentTPM": {n: 1234.0 for n in names},
    }
    console = Console(width=80, record=True, color_system=None)
    render_stats(report, console)
    text = console.export_text()
    assert "…" not in text
    assert all(n in text for n in names)
    assert "1 request," in text and "half-open" in text
    assert "half-open until" not in text  # a half-open breaker's recovery time is past
    assert max(len(line) for line in text.splitlines()) <= 80


# -- concurrent edits -------------------------------------------------------------------------

PUSH = """
import sys
from lbprovider.profiles.store import ProfileStore
ProfileStore().push("team", sys.argv[1])
"""


@pytest.mark.slow
def test_concurrent_pushes_lose_nothing(write_profile: WriteProfile, isolated: Path) -> None:
    """Ten processes pushing ten members at once leave all ten (and the first one)."""
    for i in range(11):
        write_profile(f"m{i}", member())
    write_profile("team", lb(["m0"], policy="roundrobin"))
    env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUSH, f"m{i}"], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(1, 11)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    data = json.loads((isolated / "profiles" / "team.json").read_text())
    assert sorted(data["profiles"]) == sorted(f"m{i}" for i in range(11))
