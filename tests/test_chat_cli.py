"""`lbprovider chat` (SPEC §8) over sim backends, through CliRunner and a real process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from lbprovider.cli import cli
from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import SIM_KEY, WriteProfile, lb, member, run_process

pytest.importorskip("litellm")


@pytest.fixture
def sims() -> Iterator[tuple[SimServer, SimServer]]:
    """A failing and a healthy backend, each on its own loop in a thread."""
    with serve_in_thread("status=503") as bad, serve_in_thread("text=pong from b") as good:
        yield bad, good


@pytest.fixture
def pair(sims: tuple[SimServer, SimServer], write_profile: WriteProfile) -> None:
    """Profiles: members bad and good, LB `pair` (failover) and `down` (both failing)."""
    bad, good = sims
    write_profile("bad", member(base_url=bad.url))
    write_profile("good", member(base_url=good.url, model="good-model"))
    write_profile("pair", lb(["bad", "good"], failover_retry_count=1))
    write_profile("down", lb(["bad", "bad2"], failover_retry_count=1))
    write_profile("bad2", member(base_url=bad.url))


def test_chat_streams_text(pair: None, sims: tuple[SimServer, SimServer]) -> None:
    """chat prints the answer of the member that served, after a failover."""
    result = CliRunner().invoke(cli, ["chat", "-p", "pair", "hello"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "pong from b\n"
    assert sims[0].hits == 1 and sims[1].hits == 1


def test_chat_json(pair: None) -> None:
    """--json prints {text, backend, model, failover, attempts, usage}."""
    result = CliRunner().invoke(cli, ["chat", "-p", "pair", "--json", "hello"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("text", "backend", "model", "failover", "attempts")} == {
        "text": "pong from b",
        "backend": "good",
        "model": "openai/good-model",
        "failover": True,
        "attempts": 2,
    }
    assert data["usage"]["prompt_tokens"] == 12


def test_chat_reads_stdin(pair: None) -> None:
    """With no PROMPT, the prompt is read from standard input."""
    result = CliRunner().invoke(cli, ["chat", "-p", "pair"], input="from stdin\n")
    assert result.exit_code == 0
    assert result.stdout == "pong from b\n"


def test_chat_failure_exit_1(pair: None) -> None:
    """When every member fails: exit 1, stderr names each member and reason, no key."""
    result = CliRunner().invoke(cli, ["chat", "-p", "down", "hello"])
    assert result.exit_code == 1
    assert "bad: 503" in result.stderr and "bad2: 503" in result.stderr
    assert "retrying later may help" in result.stderr
    assert SIM_KEY not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["chat", "-p", "nope", "hi"], "'nope' not found"),
        (["chat", "-p", "good", "hi"], "not a load balancer"),
        (["chat", "-p", "pair", "  "], "empty prompt"),
    ],
)
def test_chat_bad_input_exit_2(pair: None, args: list[str], message: str) -> None:
    """A missing or wrong profile, or an empty prompt, is bad input: exit 2."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("transport", ["native", "litellm"])
def test_cold_process_does_not_time_out_healthy_backend(
    write_profile: WriteProfile, isolated: Path, transport: str
) -> None:
    """A fresh process with a tight first-chunk timeout is served by its healthy first member.

    Importing and warming litellm takes far longer than 300 ms; it must happen before
    the first-chunk clock starts (and the native transport has nothing to warm).
    """
    with serve_in_thread("text=warm") as a, serve_in_thread("text=other") as b:
        write_profile("a", member(base_url=a.url, transport=transport))
        write_profile("b", member(base_url=b.url, transport=transport))
        write_profile("tight", lb(["a", "b"], timeout_ms=300, failover_retry_count=1))
        env = {**os.environ, "LBPROVIDER_HOME": str(isolated)}
        proc = run_process(env, "chat", "-p", "tight", "--json", "hi")
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert (data["backend"], data["attempts"], b.hits) == ("a", 1, 0)
