"""The `llm` plugin (SPEC §10), driven through the real `llm` CLI with the plugin loaded
from its entry point, against sim backends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import WriteProfile, lb, member, member_provider

llm_cli = pytest.importorskip("llm.cli")
pytest.importorskip("litellm")
pytestmark = pytest.mark.usefixtures("both_transports")

TOOL = 'def get_weather(city: str) -> str:\n    "Weather of a city."\n    return "sunny"\n'


@pytest.fixture(autouse=True)
def llm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """llm's user dir (keys, logs.db) in a temp dir."""
    path = tmp_path / "llm"
    path.mkdir()
    monkeypatch.setenv("LLM_USER_PATH", str(path))
    return path


@pytest.fixture
def sims() -> Iterator[dict[str, SimServer]]:
    """A failing backend, a healthy one and one that answers with a tool call."""
    with (
        serve_in_thread("status=503") as bad,
        serve_in_thread("text=pong from good,prompt_tokens=21,completion_tokens=4") as good,
        serve_in_thread("tool_call,text=It is sunny in Paris.") as tools,
    ):
        yield {"bad": bad, "good": good, "tools": tools}


@pytest.fixture
def profiles(sims: dict[str, SimServer], write_profile: WriteProfile) -> None:
    """Members bad/good/tools; LBs pair (bad→good), down (bad only), toolbox (tools, good)."""
    for name, server in sims.items():
        write_profile(name, member(base_url=server.url, model=f"{name}-model"))
    write_profile("pair", lb(["bad", "good"], failover_retry_count=1))
    write_profile("down", lb(["bad"], policy="roundrobin", failover_retry_count=1))
    write_profile("toolbox", lb(["tools", "good"]))


def llm(*args: str, stdin: str | None = None) -> Result:
    """Invoke the `llm` CLI in-process."""
    return CliRunner().invoke(llm_cli.cli, list(args), input=stdin)


def test_models_list(profiles: None) -> None:
    """Every load-balancer profile is a model lb/NAME; member profiles are not."""
    result = llm("models", "list")
    assert result.exit_code == 0
    assert "lbprovider: lb/pair" in result.output
    assert "lbprovider: lb/toolbox" in result.output
    assert "lb/good" not in result.output


def test_prompt_streams_after_failover(profiles: None, sims: dict[str, SimServer]) -> None:
    """`llm -m lb/pair hi` answers from the healthy member after the failing one."""
    result = llm("-m", "lb/pair", "hi")
    assert result.exit_code == 0, result.output
    assert result.output == "pong from good\n"
    assert (sims["bad"].hits, sims["good"].hits) == (1, 1)


@pytest.mark.parametrize("flags", [["--no-stream"], ["--no-stream", "--async"]])
def test_no_stream_fails_over_after_a_cut_stream(
    flags: list[str], write_profile: WriteProfile
) -> None:
    """`llm --no-stream`: a stream cut half-way fails over; one whole answer comes back."""
    with (
        serve_in_thread("drop_after=2,text=cut short") as cut,
        serve_in_thread("text=whole answer") as whole,
    ):
        write_profile("cut", member(base_url=cut.url))
        write_profile("whole", member(base_url=whole.url))
        write_profile("cutpair", lb(["cut", "whole"]))
        result = llm("-m", "lb/cutpair", *flags, "hi")
        assert result.exit_code == 0, result.output
        assert result.output == "whole answer\n"
        assert (cut.hits, whole.hits) == (1, 1)


def test_async(profiles: None) -> None:
    """--async uses the async model."""
    result = llm("-m", "lb/pair", "--async", "hi")
    assert result.exit_code == 0, result.output
    assert result.output == "pong from good\n"


def test_options_and_system_prompt(
    profiles: None, sims: dict[str, SimServer], both_transports: str
) -> None:
    """Options and the system prompt reach the backend (Anthropic's in its `system`)."""
    result = llm(
        "-m",
        "lb/pair",
        "-s",
        "be brief",
        "-o",
        "temperature",
        "0.3",
        "-o",
        "max_tokens",
        "50",
        "hi",
    )
    assert result.exit_code == 0, result.output
    body = sims["good"].requests[-1]
    assert (body["temperature"], body["max_tokens"]) == (0.3, 50)
    if both_transports == "anthropic":
        assert (body["system"], body["messages"]) == (
            "be brief",
            [{"role": "user", "content": "hi"}],
        )
    else:
        assert body["messages"] == [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ]


def test_chat_two_turns(profiles: None, sims: dict[str, SimServer]) -> None:
    """`llm chat` works for two turns; the second carries the history."""
    result = llm("chat", "-m", "lb/pair", stdin="hello\nagain\nquit\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("pong from good") == 2
    history = sims["good"].requests[-1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"] == "pong from good"


def test_logs_record_usage_and_member(profiles: None) -> None:
    """`llm logs --json` shows token counts and the serving member as the resolved model."""
    assert llm("-m", "lb/pair", "hi").exit_code == 0
    result = llm("logs", "--json", "-n", "1")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    assert entry["model"] == "lb/pair"
    assert (entry["input_tokens"], entry["output_tokens"]) == (21, 4)
    assert entry["resolved_model"] == f"good ({member_provider()}/good-model)"


def test_lb_stats_shows_the_request(profiles: None) -> None:
    """`llm lb stats NAME --json` shows what the models did (shared state)."""
    assert llm("-m", "lb/pair", "hi").exit_code == 0
    result = llm("lb", "stats", "pair", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["totalRequests"] == 1
    assert report["profileCounts"] == {"bad": 0, "good": 1}


def test_lb_commands_mounted(profiles: None) -> None:
    """The lbprovider commands are mounted under `llm lb`, with their exit codes."""
    result = llm("lb", "profiles", "list")
    assert result.exit_code == 0 and "pair" in result.output
    assert llm("lb", "profiles", "show", "../x").exit_code == 2


def test_engine_error_is_model_error(profiles: None) -> None:
    """When nothing can serve, llm prints the engine's message and exits non-zero."""
    result = llm("-m", "lb/down", "hi")
    assert result.exit_code == 1
    assert "Error: no backend of 'down' could serve the request (bad: 503" in result.output


def test_tool_call_round_trip(profiles: None, sims: dict[str, SimServer]) -> None:
    """A tool call streams back, llm runs the tool, the result goes back in the history."""
    result = llm("-m", "lb/toolbox", "--functions", TOOL, "weather in Paris?")
    assert result.exit_code == 0, result.output
    assert "It is sunny in Paris." in result.output
    first, second = sims["tools"].requests[-2:]
    offered, call, result = _tool_round(first, second)
    assert offered == "get_weather"
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}
    assert result == {"id": call["id"], "content": "sunny"}


def _tool_round(first: dict[str, Any], second: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    """(the tool offered, the call sent back, the result) as a member received them, in
    either API form (OpenAI tool_calls / tool messages, Anthropic tool_use / tool_result)."""
    if member_provider() == "anthropic":
        blocks = [
            b for m in second["messages"] if isinstance(m["content"], list) for b in m["content"]
        ]
        use = next(b for b in blocks if b["type"] == "tool_use")
        done = next(b for b in blocks if b["type"] == "tool_result")
        call = {"id": use["id"], "name": use["name"], "arguments": use["input"]}
        return (
            first["tools"][0]["name"],
            call,
            {"id": done["tool_use_id"], "content": done["content"]},
        )
    tool_message = next(m for m in second["messages"] if m["role"] == "tool")
    sent = next(m for m in second["messages"] if m.get("tool_calls"))["tool_calls"][0]
    call = {
        "id": sent["id"],
        "name": sent["function"]["name"],
        "arguments": json.loads(sent["function"]["arguments"]),
    }
    result = {"id": tool_message["tool_call_id"], "content": tool_message["content"]}
    return first["tools"][0]["function"]["name"], call, result


def test_plugin_import_is_light() -> None:
    """Importing the plugin imports neither litellm nor the routing engine."""
    probe = (
        "import sys, lbprovider.integrations.llm_plugin\n"
        "heavy = [m for m in ('litellm', 'lbprovider.provider', 'lbprovider.routing')"
        " if m in sys.modules]\nprint(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
