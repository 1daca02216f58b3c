"""SPEC §4.1: the native transport against the sim, and the transport contract both share.

Every failure must leave a transport as the neutral ``TransportError`` (status,
Retry-After, the provider's code, network/timeout flags, a message without secrets),
whatever client library is underneath.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from lbprovider.config import Member, TransportKind
from lbprovider.errors import TransportError
from lbprovider.sim import SimServer, serve
from lbprovider.transport import Chunk, TransportSet, call_params
from lbprovider.transport.native import NativeTransport, close_pool, pool
from tests.conftest import HI, SIM_KEY, WriteProfile, lb, make_lb, member

MESSAGES = [{"role": "user", "content": "hi"}]


def member_of(
    target: SimServer | str, kind: str = "native", key: str | None = SIM_KEY, **fields: Any
) -> Member:
    """A member calling the sim (or a URL) through transport ``kind`` ("anthropic": a
    native member of provider anthropic)."""
    return Member(
        name="m",
        provider="anthropic" if kind == "anthropic" else "openai",
        model="sim-model",
        api_base=target if isinstance(target, str) else target.url,
        api_key=SecretStr(key) if key is not None else None,
        model_params=fields.pop("model_params", {}),
        transport=TransportKind("native" if kind == "anthropic" else kind),
        **fields,
    )


async def collect(
    m: Member, params: dict[str, Any] | None = None, messages: Any = None
) -> list[Chunk]:
    """Every chunk of one call through the member's transport."""
    transport = TransportSet().for_member(m)
    await transport.warm_up()
    return [c async for c in transport.stream(m, messages or MESSAGES, params or {})]


async def failure(m: Member, params: dict[str, Any] | None = None) -> TransportError:
    """The TransportError one call raises (and nothing else)."""
    with pytest.raises(TransportError) as info:
        await collect(m, params)
    return info.value


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the contract, on both transports ---------------------------------------------------------

STATUS_CODES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


@pytest.mark.parametrize("kind", ["native", "litellm", "anthropic"])
@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422, 429, 500, 502, 503])
async def test_each_status_is_carried(kind: str, status: int) -> None:
    """An error status reaches the engine as TransportError.status, not a network error."""
    async with serve(f"status={status}") as s:
        err = await failure(member_of(s, kind))
    assert err.status == status
    assert not err.network
    assert err.member == "m"
    assert err.message
    if kind == "native" and status in STATUS_CODES:
        assert err.code == STATUS_CODES[status]


@pytest.mark.parametrize("kind", ["native", "litellm"])
@pytest.mark.parametrize("code", ["context_length_exceeded", "content_policy_violation"])
async def test_provider_error_code_is_carried(kind: str, code: str) -> None:
    """The provider's error code (what makes a 400 request-specific) reaches the engine."""
    async with serve(f"status=400,error_code={code}") as s:
        err = await failure(member_of(s, kind))
    assert (err.status, err.code) == (400, code)


@pytest.mark.parametrize("kind", ["native", "litellm", "anthropic"])
@pytest.mark.parametrize(
    ("behavior", "low", "high"),
    [
        ("retry_after=7", 7.0, 7.0),
        ("retry_after_ms=1500", 1.5, 1.5),
        # An HTTP date has one-second resolution and the clock moves between header and read.
        ("retry_after_date=30", 27.0, 31.0),
    ],
)
async def test_retry_after_in_three_forms(
    kind: str, behavior: str, low: float, high: float
) -> None:
    """Retry-After as seconds, as an HTTP date and as retry-after-ms: seconds to wait."""
    async with serve(f"status=429,{behavior}") as s:
        err = await failure(member_of(s, kind))
    assert err.retry_after is not None
    assert low <= err.retry_after <= high


@pytest.mark.parametrize("kind", ["native", "litellm", "anthropic"])
async def test_refused_connection_is_network_error_naming_host_and_port(kind: str) -> None:
    """A refused connection: network, no status, and the message names host and port."""
    port = closed_port()
    err = await failure(member_of(f"http://127.0.0.1:{port}/v1", kind))
    assert err.network and err.status is None
    if kind != "litellm":
        assert f"127.0.0.1:{port}" in err.message
        assert "refused" in err.message.lower()


@pytest.mark.parametrize("kind", ["native", "litellm", "anthropic"])
async def test_reset_before_answer_is_network_error(kind: str) -> None:
    """A connection reset before any answer is a network error."""
    async with serve("reset") as s:
        err = await failure(member_of(s, kind))
    assert err.network and err.status is None


@pytest.mark.parametrize("kind", ["native", "litellm", "anthropic"])
async def test_key_never_in_error_message(kind: str) -> None:
    """A provider that quotes the key back: the message carries no part of it."""
    key = "sk-quoted-back-by-the-provider-9876"
    async with serve("status=401,echo_key") as s:
        err = await failure(member_of(s, kind, key=key))
        assert s.api_keys[-1] == key  # it did reach the backend, and came back quoted
    assert key not in err.message and key[:12] not in err.message


# -- the native transport against the sim -----------------------------------------------------


async def test_stream_text_usage_and_request() -> None:
    """Text arrives in chunks, usage on the last one; the request is what OpenAI expects."""
    async with serve("chunks=4,prompt_tokens=7,completion_tokens=9") as s:
        chunks = await collect(member_of(s, model_params={"temperature": 0.3}))
        body, headers = s.requests[-1], s.headers[-1]
    assert "".join(c.text for c in chunks) == "Hello from the simulated backend."
    assert sum(1 for c in chunks if c.text) == 4
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 9)
    assert any(c.finish_reason == "stop" for c in chunks)
    assert all(c.backend == "m" and c.model == "openai/sim-model" for c in chunks)
    assert body["model"] == "sim-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == MESSAGES and body["temperature"] == 0.3
    assert headers["Authorization"] == f"Bearer {SIM_KEY}"


async def test_extra_headers_are_headers_not_body() -> None:
    """modelParams.extra_headers become HTTP headers; the body does not carry them."""
    async with serve() as s:
        await collect(member_of(s, model_params={"extra_headers": {"X-Title": "lbprovider"}}))
        body, headers = s.requests[-1], s.headers[-1]
    assert headers["X-Title"] == "lbprovider"
    assert "extra_headers" not in body


async def test_no_key_sends_no_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member without a key and no OPENAI_API_KEY sends no bearer header (local servers)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with serve() as s:
        await collect(member_of(s, key=None))
        assert "Authorization" not in s.headers[-1]


async def test_malformed_event_skipped_and_counted() -> None:
    """An invalid SSE event is skipped, counted on the next chunk, and the stream goes on."""
    async with serve("malformed,chunks=3") as s:
        chunks = await collect(member_of(s))
    assert "".join(c.text for c in chunks) == "Hello from the simulated backend."
    assert sum(c.malformed for c in chunks) == 1


async def test_malformed_events_reach_the_stats() -> None:
    """The engine adds skipped events to the member's malformedChunks."""
    async with serve("malformed") as s:
        lb = make_lb({"a": s})
        result = await lb.complete(HI)
    assert result.text == "Hello from the simulated backend."
    assert lb.stats()["backendMetrics"]["a"]["malformedChunks"] == 1


async def test_finish_without_done_is_complete() -> None:
    """A stream that ends after its finish_reason without [DONE] is a whole answer."""
    async with serve("no_done,chunks=2") as s:
        chunks = await collect(member_of(s))
    assert "".join(c.text for c in chunks) == "Hello from the simulated backend."
    assert chunks[-1].usage is not None


async def test_end_without_finish_or_done_is_network_error() -> None:
    """A body that ends with neither a finish_reason nor [DONE] was cut: a network error."""
    async with serve("no_finish,chunks=2") as s:
        err = await failure(member_of(s))
    assert err.network and "ended before" in err.message


async def test_dropped_connection_mid_stream_is_network_error() -> None:
    """A connection cut after two chunks raises a network error naming host and port."""
    async with serve("drop_after=2,chunks=5") as s:
        m = member_of(s)
        transport = NativeTransport()
        seen: list[str] = []

        async def read() -> None:
            async for chunk in transport.stream(m, MESSAGES, {}):
                seen.append(chunk.text)

        with pytest.raises(TransportError) as info:
            await read()
    assert len([t for t in seen if t]) == 2
    assert info.value.network
    assert f"127.0.0.1:{s.port}" in info.value.message


async def test_error_event_inside_a_stream() -> None:
    """An error object sent inside a 200 stream raises with its numeric code as status."""
    async with serve("stream_error_after=1,chunks=3") as s:
        err = await failure(member_of(s))
    assert err.status == 502 and "mid-stream" in err.message


async def test_tool_call_deltas() -> None:
    """Tool calls go out in the request and come back as deltas that join into the call."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    async with serve("tool_call") as s:
        chunks = await collect(member_of(s), {"tools": tools})
        sent = s.requests[-1]
    deltas = [d for c in chunks for d in c.tool_calls]
    assert sent["tools"] == tools
    assert deltas[0].id == "call_sim_1" and deltas[0].name == "weather"
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}
    assert any(c.finish_reason == "tool_calls" for c in chunks)


async def test_tool_result_messages_are_sent_as_given() -> None:
    """An assistant tool call and the tool's result travel to the backend unchanged."""
    convo = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    async with serve() as s:
        await collect(member_of(s), messages=convo)
        assert s.requests[-1]["messages"] == convo


async def test_json_answer_to_a_streaming_request() -> None:
    """A backend that ignores `stream` and answers one JSON object still serves."""
    async with serve("ignore_stream,prompt_tokens=3,completion_tokens=4") as s:
        chunks = await collect(member_of(s))
    assert len(chunks) == 1
    assert chunks[0].text == "Hello from the simulated backend."
    assert chunks[0].finish_reason == "stop"
    assert chunks[0].usage is not None and chunks[0].usage.total_tokens == 7


async def test_connection_reused_within_a_loop() -> None:
    """Sequential requests on one loop share one pool and one kept-alive connection."""
    async with serve() as s:
        m = member_of(s)
        await collect(m)
        await collect(m)
        assert await pool() is await pool()
        assert s.peers[0] == s.peers[1]
        await close_pool()
        await collect(m)
        assert s.peers[2] != s.peers[1]  # a closed pool is replaced by a new one


@pytest.mark.parametrize("kind", ["native", "litellm", "anthropic"])
async def test_max_output_tokens_caps_the_request(kind: str) -> None:
    """A request's max_tokens above the member's cap is lowered to it; below, untouched."""
    async with serve() as s:
        m = member_of(s, kind, max_output_tokens=4096)
        await collect(m, {"max_tokens": 32000})
        await collect(m, {"max_completion_tokens": 32000})
        await collect(m, {"max_tokens": 100})
        sent = s.requests
    assert sent[0]["max_tokens"] == 4096
    # The Messages API has one output cap, max_tokens.
    assert sent[1]["max_tokens" if kind == "anthropic" else "max_completion_tokens"] == 4096
    assert sent[2]["max_tokens"] == 100


def test_call_params_order_and_reserved() -> None:
    """Member modelParams, then the caller's (reserved ones dropped), then the cap."""
    m = Member(
        name="m",
        provider="openai",
        model="x",
        api_base=None,
        api_key=None,
        model_params={"temperature": 0.1, "max_tokens": 50_000},
        max_output_tokens=8000,
    )
    out = call_params(m, {"temperature": 0.7, "api_key": "sk-caller", "model": "other"})
    assert out == {"temperature": 0.7, "max_tokens": 8000}


def test_default_transport_by_provider(write_profile: WriteProfile) -> None:
    """provider openai → native (whatever the base URL); others → litellm; overridable."""
    from lbprovider.profiles.store import ProfileStore

    write_profile("o", member())
    write_profile("g", {**member(), "provider": "gemini"})
    write_profile("x", member(transport="litellm"))
    write_profile("lb", lb(["o", "g", "x"]))
    config = ProfileStore().load_loadbalancer("lb")
    assert [m.transport for m in config.members] == ["native", "litellm", "litellm"]


def test_bad_transport_value(write_profile: WriteProfile) -> None:
    """An unknown transport is an error naming the file and the field."""
    from lbprovider.errors import ProfileValidationError
    from lbprovider.profiles.store import ProfileStore

    path = write_profile("o", member(transport="grpc"))
    with pytest.raises(ProfileValidationError) as info:
        ProfileStore().load("o")
    assert info.value.file == path
    assert info.value.field == "ephemeralSettings.transport"


# -- what a native-only process loads -----------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import atexit, sys
    def report():
        heavy = sorted(m for m in ("litellm", "openai") if m in sys.modules)
        sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
    atexit.register(report)
    from lbprovider.cli import main
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_native_only_chat_imports_neither_litellm_nor_openai(
    write_profile: WriteProfile, isolated: Path
) -> None:
    """A `chat` whose members are all native imports neither litellm nor the openai SDK."""
    from lbprovider.sim import serve_in_thread

    with serve_in_thread() as s:
        write_profile("a", member(base_url=s.url))
        write_profile("b", member(base_url=s.url))
        write_profile("duo", lb(["a", "b"]))
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, "chat", "-p", "duo", "hello"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert "Hello from the simulated backend." in proc.stdout
    assert "HEAVY=\n" in proc.stderr
    assert "Unclosed" not in proc.stderr


@pytest.mark.parametrize(
    ("behavior", "reason"),
    [
        ("html", "answered text/html, not an event stream"),
        ("all_malformed", "no readable event in the answer"),
        ("not_completion", "answered with a body that is not a chat completion"),
    ],
)
async def test_a_200_without_an_answer_is_a_failure_with_no_status(
    behavior: str, reason: str
) -> None:
    """A 200 holding no readable answer fails with no status and says what came."""
    async with serve(behavior) as s:
        err = await failure(member_of(s))
    assert err.status is None and not err.network
    assert reason in err.message


@pytest.mark.parametrize(
    ("behavior", "reason"),
    [
        ("html", "answered text/html, not an event stream"),
        ("all_malformed", "no readable event in the answer"),
        ("not_completion", "answered with a body that is not a chat completion"),
    ],
)
async def test_a_200_without_an_answer_fails_over(behavior: str, reason: str) -> None:
    """The member is retried, then the next one serves; its lastError says what came."""
    async with serve(behavior) as bad, serve() as good:
        lb = make_lb({"alpha": bad, "bravo": good}, failover_retry_count=2)
        result = await lb.complete(HI)
    assert result.backend == "bravo"
    assert result.text == "Hello from the simulated backend."
    assert bad.hits == 2
    assert reason in lb.stats()["backendMetrics"]["alpha"]["lastError"]


async def test_cached_prompt_tokens_are_read() -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens becomes cache_read_tokens."""
    async with serve("cached_tokens=7") as s:
        chunks = await collect(member_of(s))
    usage = chunks[-1].usage
    assert usage is not None and usage.cache_read_tokens == 7


@pytest.mark.parametrize("behavior", ["html", "not_completion"])
async def test_litellm_200_without_an_answer_is_a_failure(behavior: str) -> None:
    """Through litellm too, a 200 with nothing readable fails with no status."""
    async with serve(behavior) as s:
        err = await failure(member_of(s, "litellm"))
    assert err.status is None and "no readable event in the answer" in err.message


def test_litellm_member_without_litellm_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With litellm not installed, a litellm member is a ConfigError naming it and the fix."""
    from lbprovider.config import LoadBalancerConfig, Policy
    from lbprovider.errors import ConfigError
    from lbprovider.provider import LoadBalancingProvider
    from lbprovider.settings import LBSettings
    from lbprovider.state.memory import MemoryStore

    monkeypatch.setitem(sys.modules, "litellm", None)  # what an absent module looks like
    config = LoadBalancerConfig(
        name="pair",
        policy=Policy.FAILOVER,
        members=(
            replace(member_of("http://127.0.0.1:9/v1"), name="native-one"),
            replace(member_of("http://127.0.0.1:9/v1", "litellm"), name="groq-one"),
        ),
        settings=LBSettings(),
        model_params={},
    )
    with pytest.raises(ConfigError) as info:
        LoadBalancingProvider(config, store=MemoryStore())
    message = str(info.value)
    assert "member 'groq-one'" in message
    assert "pip install 'lbprovider[litellm]'" in message


BLOCK_LITELLM = textwrap.dedent(
    """
    import sys
    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name == "litellm" or name.startswith("litellm."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, Absent())
    from lbprovider.cli import main
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_cli_without_litellm_exits_2_naming_the_member(write_profile: WriteProfile) -> None:
    """`chat` through a litellm member in an install without litellm: exit 2, what to run."""
    write_profile("a", member())
    write_profile("b", member(transport="litellm"))
    write_profile("duo", lb(["a", "b"]))
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_LITELLM, "chat", "-p", "duo", "hello"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "member 'b'" in proc.stderr
    assert "pip install 'lbprovider[litellm]'" in proc.stderr
    assert "Traceback" not in proc.stderr
