"""SPEC §8: the profiles commands through click's CliRunner, exit codes and redaction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lbprovider.cli import cli
from tests.conftest import WriteProfile, lb, member, run_process

SECRET = "sk-live-abcdefghijklmnop7890"


def run(*args: str) -> tuple[int, str, str]:
    """Invoke the CLI; return exit code, stdout, stderr."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def three(write_profile: WriteProfile) -> None:
    """Three members a, b, c (a holds a real-looking key) and a failover LB over a, b."""
    write_profile("a", member(key=SECRET))
    write_profile("b", member())
    write_profile("c", member())
    write_profile("fo", lb(["a", "b"]))


def test_help_lists_commands() -> None:
    """--help names the command groups."""
    code, out, _ = run("--help")
    assert code == 0 and "profiles" in out and "sim" in out


def test_list(three: None, profiles_dir: Path) -> None:
    """list shows each profile with its kind and file."""
    code, out, _ = run("profiles", "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"a", "b", "c", "fo"}
    assert "loadbalancer (failover: a, b)" in lines["fo"]
    assert "member (openai/sim-model)" in lines["a"]
    assert str(profiles_dir / "fo.json") in lines["fo"]


def test_list_empty(isolated: Path) -> None:
    """An empty store says where it looked."""
    code, _, err = run("profiles", "list")
    assert code == 0 and "no profiles found" in err


def test_show_redacts_key(three: None) -> None:
    """show prints no more of a key than its last 4 characters."""
    code, out, _ = run("profiles", "show", "a")
    assert code == 0
    data = json.loads(out)
    assert data["ephemeralSettings"]["auth-key"] == "****7890"
    assert SECRET[:-4] not in out


def test_show_missing_exit_2(three: None) -> None:
    """A missing profile is bad input: exit 2 with a message naming it."""
    code, _, err = run("profiles", "show", "nope")
    assert code == 2 and "'nope' not found" in err


def test_show_bad_name_exit_2(three: None) -> None:
    """A path-like name is refused with exit 2."""
    code, _, err = run("profiles", "show", "../a")
    assert code == 2 and "invalid profile name" in err


def test_validate_all_ok(three: None) -> None:
    """validate with no name checks every profile."""
    code, out, _ = run("profiles", "validate")
    assert code == 0
    assert sorted(line.split()[1].rstrip(":") for line in out.splitlines()) == ["a", "b", "c", "fo"]


def test_validate_reports_every_problem(three: None, write_profile: WriteProfile) -> None:
    """Each broken profile gets its own line; exit 2; keys never printed."""
    write_profile("trunc", '{"version": 1, "provider": ')
    write_profile("badset", lb(["a", "b"], failover_retry_count=0))
    write_profile("nested", lb(["a", "fo"]))
    code, out, err = run("profiles", "validate")
    assert code == 2
    assert "error  trunc:" in err and "line 1 column 28" in err
    assert "error  badset:" in err and "ephemeralSettings.failover_retry_count" in err
    assert "error  nested:" in err and "profiles[1]" in err
    assert "3 of 7 profile(s) have errors" in err
    assert "ok     fo:" in out
    assert SECRET not in out + err


def test_validate_named(three: None) -> None:
    """validate NAME checks only that one; an unknown name fails with exit 2."""
    code, out, _ = run("profiles", "validate", "fo")
    assert code == 0 and out.startswith("ok     fo:")
    code, _, err = run("profiles", "validate", "fo", "ghost")
    assert code == 2 and "ghost" in err


def test_validate_warns_missing_member(three: None, write_profile: WriteProfile) -> None:
    """A missing member is a warning, not an error."""
    write_profile("partial", lb(["a", "b", "ghost"]))
    code, _, err = run("profiles", "validate", "partial")
    assert code == 0 and "warn   partial: profiles[2]: member 'ghost' not found" in err


def test_save_lb(three: None, profiles_dir: Path) -> None:
    """save-lb writes a valid LB with the given settings, mode 0600."""
    code, out, _ = run(
        "profiles",
        "save-lb",
        "rr",
        "--policy",
        "Round-Robin",
        "a",
        "b",
        "c",
        "--set",
        "timeout_ms=8000",
        "--set",
        "circuit_breaker_enabled=true",
    )
    assert code == 0, out
    path = profiles_dir / "rr.json"
    data = json.loads(path.read_text())
    assert data["type"] == "loadbalancer" and data["profiles"] == ["a", "b", "c"]
    assert data["ephemeralSettings"] == {"timeout_ms": 8000, "circuit_breaker_enabled": True}
    assert path.stat().st_mode & 0o777 == 0o600
    assert run("profiles", "validate", "rr")[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "timout_ms=5"], "did you mean 'timeout_ms'"),
        (["--set", "timeout_ms=-1"], "--set timeout_ms: must be at least 0"),
        (["--set", "novalue"], "not KEY=VALUE"),
        (["--policy", "random"], "--policy: must be one of"),
    ],
)
def test_save_lb_bad_input(three: None, profiles_dir: Path, args: list[str], message: str) -> None:
    """Bad settings or policy: exit 2, a clear message naming the argument (not a file
    that was never written), nothing written."""
    base = ["profiles", "save-lb", "x", "a", "b"]
    if "--policy" not in args:
        base += ["--policy", "failover"]
    code, _, err = run(*base, *args)
    assert code == 2 and message in err
    assert not (profiles_dir / "x.json").exists()


def test_save_lb_unknown_member(three: None, profiles_dir: Path) -> None:
    """save-lb refuses a member that does not exist."""
    code, _, err = run("profiles", "save-lb", "x", "--policy", "failover", "a", "ghost")
    assert code == 2 and "'ghost' not found" in err
    assert not (profiles_dir / "x.json").exists()


def test_save_lb_refuses_nesting_and_member_overwrite(three: None) -> None:
    """save-lb refuses an LB member and will not overwrite a member profile."""
    code, _, err = run("profiles", "save-lb", "x", "--policy", "failover", "a", "fo")
    assert code == 2 and "do not nest" in err
    code, _, err = run("profiles", "save-lb", "a", "--policy", "failover", "b", "c")
    assert code == 2 and "already exists as a member profile" in err


def test_push(three: None, profiles_dir: Path) -> None:
    """push appends a member."""
    code, out, _ = run("profiles", "push", "fo", "c")
    assert code == 0 and "fo: a, b, c" in out
    assert json.loads((profiles_dir / "fo.json").read_text())["profiles"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("member_name", "message"),
    [
        ("a", "already a member"),
        ("ghost", "'ghost' not found"),
        ("fo2", "is itself a load balancer"),
    ],
)
def test_push_refusals(
    three: None, write_profile: WriteProfile, profiles_dir: Path, member_name: str, message: str
) -> None:
    """push says which rule refused the member; the file is unchanged."""
    write_profile("fo2", lb(["b", "c"]))
    before = (profiles_dir / "fo.json").read_text()
    code, _, err = run("profiles", "push", "fo", member_name)
    assert code == 2 and message in err
    assert (profiles_dir / "fo.json").read_text() == before


def test_push_onto_member_refused(three: None) -> None:
    """push NAME must name a load balancer."""
    code, _, err = run("profiles", "push", "a", "b")
    assert code == 2 and "not a load balancer" in err


def test_pop(three: None, profiles_dir: Path) -> None:
    """pop removes the last member but never below the policy's minimum."""
    assert run("profiles", "push", "fo", "c")[0] == 0
    code, out, _ = run("profiles", "pop", "fo")
    assert code == 0 and "removed c" in out
    code, _, err = run("profiles", "pop", "fo")
    assert code == 2 and "needs at least 2" in err
    assert json.loads((profiles_dir / "fo.json").read_text())["profiles"] == ["a", "b"]


def test_sim_bad_behavior() -> None:
    """An unknown sim behaviour is bad input (exit 2)."""
    code, _, err = run("sim", "--behavior", "explode=1", "--for", "0.1")
    assert code == 2 and "unknown sim behaviour 'explode'" in err


@pytest.mark.parametrize(
    "code_line",
    [
        "import lbprovider.cli",
        "from lbprovider.cli import main; main(['--help'])",
        "from lbprovider.cli import main; main(['profiles', 'list'])",
        "from lbprovider.cli import main; main(['profiles', 'validate'])",
        "from lbprovider.cli import main; main(['stats'])",
        "from lbprovider.cli import main; main(['stats', '--json'])",
    ],
)
def test_cli_does_not_import_litellm(code_line: str) -> None:
    """--help, every profiles command and stats start without importing litellm, an SDK,
    or redis-py (SQLite state: pybreaker would bring redis-py in when installed)."""
    heavy = ("litellm", "openai", "redis", "pybreaker")
    probe = (
        "import sys, atexit\n"
        f"atexit.register(lambda: print([m for m in {heavy!r} if m in sys.modules] or 'CLEAN',"
        " file=sys.stderr))\n"
        f"{code_line}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stderr.strip().endswith("CLEAN"), result.stderr


@pytest.mark.parametrize(
    "code_line",
    [
        "import lbprovider.config, lbprovider.profiles, lbprovider.profiles.store",
        "from lbprovider.cli import main; main(['stats'])",
        "from lbprovider.cli import main; main(['stats', '--json'])",
        "from lbprovider.cli import main; main(['stats', 'pair', '--json'])",
    ],
)
def test_reports_do_not_import_pydantic(
    code_line: str, write_profile: WriteProfile, isolated: Path
) -> None:
    """The engine's vocabulary and a stats report (names, not keys) start without pydantic
    or asyncio: fast start (SPEC §8)."""
    write_profile("a", member())
    write_profile("b", member(key=None, **{"auth-key-env": "LB_TEST_UNSET_KEY"}))
    write_profile("pair", lb(["a", "b"]))
    heavy = ("pydantic", "asyncio")
    probe = (
        "import sys, atexit\n"
        f"atexit.register(lambda: print([m for m in {heavy!r} if m in sys.modules] or 'CLEAN',"
        " file=sys.stderr))\n"
        f"{code_line}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "LBPROVIDER_STATE": f"sqlite:///{isolated / 'state.db'}"},
    )
    assert result.stderr.strip().endswith("CLEAN"), result.stderr


def test_example_profiles_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example profiles shipped in profiles/ pass `profiles validate`."""
    examples = Path(__file__).resolve().parent.parent / "profiles"
    monkeypatch.setenv("LBPROVIDER_PROFILES_PATH", str(examples))
    code, out, err = run("profiles", "validate")
    assert code == 0, err
    assert "ok     coding-failover: loadbalancer (failover: primary, backup, local)" in out
    assert "ok     coding-rr: loadbalancer (roundrobin: primary, backup)" in out


def test_save_lb_warns_of_a_key_it_cannot_resolve(
    write_profile: WriteProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save-lb and push name the member whose key cannot be resolved now, and still save."""
    monkeypatch.delenv("LB_TEST_UNSET_KEY", raising=False)
    write_profile("alpha", member(key=None, **{"auth-key-env": "LB_TEST_UNSET_KEY"}))
    write_profile("bravo", member())
    write_profile("charlie", member(key=None, **{"auth-keyfile": "/nonexistent/key"}))
    code, out, err = run("profiles", "save-lb", "team", "--policy", "failover", "alpha", "bravo")
    assert code == 0 and "saved team (failover: alpha, bravo)" in out
    assert ("warning: profiles[0]: member 'alpha' is left out until its key can be resolved") in err
    assert "environment variable LB_TEST_UNSET_KEY is not set" in err
    code, _, err = run("profiles", "push", "team", "charlie")
    assert code == 0
    assert "member 'charlie' is left out until its key can be resolved" in err
    assert "key file '/nonexistent/key' cannot be read" in err


def test_list_calls_an_unresolvable_key_a_warning(
    write_profile: WriteProfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """list marks a member whose key is missing, and an LB leaving it out, as warnings."""
    monkeypatch.delenv("LB_TEST_UNSET_KEY", raising=False)
    write_profile("work", member(key=None, **{"auth-key-env": "LB_TEST_UNSET_KEY"}))
    write_profile("local", member())
    write_profile("coding", lb(["local", "work"], policy="roundrobin"))
    code, out, _ = run("profiles", "list")
    assert code == 0 and "INVALID" not in out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "member (openai/sim-model) (warnings: run 'profiles validate')" in lines["work"]
    assert (
        "loadbalancer (roundrobin: local) (warnings: run 'profiles validate')" in (lines["coding"])
    )
    code, _, err = run("profiles", "validate")
    assert code == 0 and "warn   work: key cannot be resolved now" in err


def test_new_lb_goes_where_its_members_are(
    write_profile: WriteProfile, isolated: Path, profiles_dir: Path
) -> None:
    """A new LB is saved in its members' one directory; mixed ones, home; --dir decides."""
    project = Path.cwd() / ".lbprovider" / "profiles"
    write_profile("p1", member(), project)
    write_profile("p2", member(), project)
    write_profile("h1", member())
    code, out, _ = run("profiles", "save-lb", "inproject", "--policy", "failover", "p1", "p2")
    assert code == 0 and str(project / "inproject.json") in out
    code, out, _ = run("profiles", "save-lb", "mixed", "--policy", "failover", "p1", "h1")
    assert code == 0 and str(profiles_dir / "mixed.json") in out
    elsewhere = isolated.parent / "elsewhere"
    code, out, _ = run(
        "profiles", "save-lb", "there", "-P", "failover", "p1", "p2", "--dir", str(elsewhere)
    )
    assert code == 0 and str(elsewhere / "there.json") in out
    # An existing one is edited where it is, whatever its members.
    code, out, _ = run("profiles", "save-lb", "mixed", "--policy", "roundrobin", "p1", "p2")
    assert code == 0 and str(profiles_dir / "mixed.json") in out
    assert not (project / "mixed.json").exists()


def _readme_first_load_balancer() -> str:
    """The bash block of the README's "A first load balancer" section."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## A first load balancer", 1)[1].split("\n## ", 1)[0]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_first_load_balancer(isolated: Path) -> None:
    """The README's commands, as written, in a fresh project; then chat from a subdirectory."""
    from lbprovider.sim import serve_in_thread

    project = isolated.parent / "project"
    (project / "src" / "deep").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "LBPROVIDER_STATE")}
    env["LBPROVIDER_HOME"] = str(isolated)
    cli_command = f"{sys.executable} -m lbprovider.cli "
    with serve_in_thread() as server:
        lines = [
            line.replace("8089", str(server.port))
            for line in _readme_first_load_balancer().splitlines()
            # Our sim is already running on a free port, in the venv the test runs in.
            if not line.startswith(("source ", "lbprovider sim "))
        ]
        script = "set -e\n" + "\n".join(
            cli_command + line.removeprefix("lbprovider ")
            if line.startswith("lbprovider ")
            else line
            for line in lines
        )
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert (project / ".lbprovider" / "profiles" / "coding.json").is_file()
        assert "member 'work' is left out until its key can be resolved" in proc.stderr
        assert "Hello from the simulated backend." in proc.stdout
        chat = run_process(
            env, "chat", "-p", "coding", "--json", "hi", cwd=project / "src" / "deep"
        )
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout)["backend"] == "local"
