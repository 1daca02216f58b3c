"""SPEC §4.2: the native Anthropic transport against the sim's ``/v1/messages``.

The engine's chat form is translated to the Messages API and the events come back as
the engine's chunks; errors reach the routing rules as the neutral ``TransportError``;
a client's own Messages request passes through as it was sent.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from pydantic import SecretStr

from lbprovider.config import Member, TransportKind
from lbprovider.errors import (
    ConfigError,
    FailureKind,
    ProfileValidationError,
    StreamInterruptedError,
    TransportError,
)
from lbprovider.routing import RequestTrace
from lbprovider.sim import SIGNATURE, SimServer, serve
from lbprovider.testing import FakeClock
from lbprovider.transport import Api, Chunk, TransportSet, Wire, member_api
from lbprovider.transport.anthropic import (
    AnthropicTransport,
    build_request,
    endpoint,
)
from tests.conftest import ENGINE_KEY, HI, SIM_KEY, WriteProfile, lb, make_lb, member

ANTHROPIC = "anthropic"


def member_of(target: SimServer | str, key: str | None = SIM_KEY, **fields: Any) -> Member:
    """A native Anthropic member calling the sim (or a URL)."""
    return Member(
        name="m",
        provider=ANTHROPIC,
        model="claude-sim",
        api_base=target if isinstance(target, str) else target.url,
        api_key=SecretStr(key) if key is not None else None,
        model_params=fields.pop("model_params", {}),
        **fields,
    )


async def collect(
    m: Member, params: dict[str, Any] | None = None, messages: Any = None, wire: Any = None
) -> list[Chunk]:
    """Every chunk of one call through the member's transport."""
    transport = TransportSet().for_member(m)
    assert isinstance(transport, AnthropicTransport)
    return [c async for c in transport.stream(m, messages or HI, params or {}, wire)]


async def failure(m: Member, params: dict[str, Any] | None = None) -> TransportError:
    """The TransportError one call raises (and nothing else)."""
    with pytest.raises(TransportError) as info:
        await collect(m, params)
    return info.value


def lb_of(servers: dict[str, SimServer], **settings: Any) -> Any:
    """A load balancer of native Anthropic members over the sims, on a fake clock."""
    return make_lb(servers, clock=FakeClock(), provider=ANTHROPIC, **settings)


# -- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "url"),
    [
        (None, "https://api.anthropic.com/v1/messages"),
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("https://proxy.example/v1", "https://proxy.example/v1/messages"),
        ("https://proxy.example/v1/", "https://proxy.example/v1/messages"),
        ("https://proxy.example/api/v1/messages", "https://proxy.example/api/v1/messages"),
        ("https://proxy.example/anthropic", "https://proxy.example/anthropic/v1/messages"),
        ("https://proxy.example/v1?tenant=a", "https://proxy.example/v1/messages?tenant=a"),
    ],
)
def test_endpoint_from_base_url(base: str | None, url: str) -> None:
    """The base-url rules of SPEC §2.1: as is, + /messages, or + /v1/messages."""
    assert endpoint(member_of(base or "")) == url


async def test_stream_text_and_the_request() -> None:
    """Text arrives in chunks, usage and finish on the last; the request is Anthropic's."""
    async with serve("chunks=4,prompt_tokens=7,completion_tokens=9") as s:
        chunks = await collect(member_of(s), {"temperature": 0.3})
        body, headers = s.requests[-1], s.headers[-1]
        assert s.api_keys == [SIM_KEY]
    assert "".join(c.text for c in chunks) == "Hello from the simulated backend."
    assert len([c for c in chunks if c.text]) == 4
    assert all(c.is_content for c in chunks[:-1])  # message_start is held, not yielded
    assert (chunks[-1].finish_reason, chunks[-1].usage) == ("stop", chunks[-1].usage)
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 9)
    assert body == {
        "model": "claude-sim",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4096,
        "temperature": 0.3,
        "stream": True,
    }
    assert headers["x-api-key"] == SIM_KEY and "Authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert {c.backend for c in chunks} == {"m"} and chunks[0].model == "anthropic/claude-sim"


async def test_no_key_configured_uses_anthropic_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a configured key, ANTHROPIC_API_KEY is the member's key."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env-1234")
    async with serve() as s:
        await collect(member_of(s, key=None))
        assert s.api_keys == ["sk-ant-from-env-1234"]


@pytest.mark.parametrize(
    ("cap", "params", "sent"),
    [
        (None, {}, 4096),
        (1024, {}, 1024),
        (1024, {"max_tokens": 32000}, 1024),
        (1024, {"max_tokens": 200}, 200),
        (None, {"max_completion_tokens": 300}, 300),
    ],
)
async def test_max_tokens_default_and_cap(
    cap: int | None, params: dict[str, Any], sent: int
) -> None:
    """max_tokens is always sent: the request's (lowered to the cap), else the cap, else 4096."""
    async with serve() as s:
        await collect(member_of(s, max_output_tokens=cap), params)
        assert s.requests[-1]["max_tokens"] == sent
        assert "max_completion_tokens" not in s.requests[-1]


async def test_lb_stream_and_complete() -> None:
    """Through the load balancer: streamed text, and complete() with backend and usage."""
    async with serve("chunks=3") as s:
        provider = lb_of({"a": s})
        texts = [c.text async for c in provider.stream(HI)]
        result = await provider.complete(HI)
    assert "".join(texts) == result.text == "Hello from the simulated backend."
    assert (result.backend, result.finish_reason, result.attempts) == ("a", "stop", 1)
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_translation_of_the_chat_form(caplog: pytest.LogCaptureFixture) -> None:
    """System, images, tools, tool_choice, tool calls and results, stop, cache_control
    and sampling parameters become the Messages API's; unknown parameters are dropped,
    named in one debug line."""
    png = "iVBORw0KGgo="
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome "},
    ]
    params = {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "The weather in a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "required",
        "stop": "END",
        "temperature": 0.2,
        "top_p": 0.9,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "frequency_penalty": 0.5,
        "response_format": {"type": "json_object"},
        "reasoning_effort": "high",
    }
    m = member_of("http://127.0.0.1:9/v1")
    with caplog.at_level(logging.DEBUG, logger="lbprovider"):
        body, _ = build_request(m, messages, params)
    assert body["system"] == "Be brief.\n\nUse tools."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?", "cache_control": {"type": "ephemeral"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": png},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
            ],
        },
        {"role": "user", "content": "Thanks"},
        # A prefill stays the trailing assistant turn (trailing whitespace is refused).
        {"role": "assistant", "content": "You are welcome"},
    ]
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "any"}
    assert body["stop_sequences"] == ["END"]
    assert (body["temperature"], body["top_p"]) == (0.2, 0.9)
    assert body["metadata"] == {"user_id": "u1"}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert not {"frequency_penalty", "response_format", "reasoning_effort", "stop"} & set(body)
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1
    assert all(p in lines[0] for p in ("frequency_penalty", "reasoning_effort", "response_format"))


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "weather"}},
            {"type": "tool", "name": "weather"},
        ),
    ],
)
def test_tool_choice(choice: Any, sent: dict[str, Any]) -> None:
    """OpenAI tool_choice values → Anthropic's."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    body, _ = build_request(
        member_of("http://127.0.0.1:9"), HI, {"tools": tools, "tool_choice": choice}
    )
    assert body["tool_choice"] == sent


def test_system_with_cache_control_stays_blocks() -> None:
    """A system part with cache_control keeps the system prompt as blocks."""
    part = {"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}
    body, _ = build_request(
        member_of("http://127.0.0.1:9"), [{"role": "system", "content": [part]}, *HI], {}
    )
    assert body["system"] == [part]


async def test_tool_use_round_trip() -> None:
    """A tool_use answer comes back as tool-call deltas; the call and its result go back
    as tool_use and tool_result blocks."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    async with serve("tool_call") as s:
        provider = lb_of({"a": s})
        first = await provider.complete(HI, tools=tools)
        assert first.finish_reason == "tool_calls"
        [call] = first.tool_calls
        assert call["id"] == "toolu_sim_1" and call["function"]["name"] == "weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        turn = [
            *HI,
            {"role": "assistant", "content": None, "tool_calls": first.tool_calls},
            {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
        ]
        second = await provider.complete(turn, tools=tools)
        sent = s.requests[-1]["messages"]
    assert second.text == "Hello from the simulated backend." and second.finish_reason == "stop"
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_sim_1", "name": "weather", "input": {"city": "Paris"}}
        ],
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_sim_1", "content": "sunny"}],
    }


async def test_tool_use_deltas_carry_the_tool_ordinal() -> None:
    """The tool block's start gives id and name at index 0; input_json_delta pieces follow."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    async with serve("tool_call,thinking=hmm") as s:
        chunks = await collect(member_of(s), {"tools": tools})
    deltas = [d for c in chunks for d in c.tool_calls]
    assert {d.index for d in deltas} == {0}
    assert (deltas[0].id, deltas[0].name) == ("toolu_sim_1", "weather")
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Paris"}


async def test_thinking_and_its_signature() -> None:
    """Thinking deltas and the signature arrive on chunks before the text; they count as content."""
    async with serve("thinking=Let me think.,chunks=3") as s:
        chunks = await collect(member_of(s))
        result = await lb_of({"a": s}).complete(HI)
    assert chunks[0].thinking and not chunks[0].text and chunks[0].is_content
    assert "".join(c.thinking for c in chunks) == "Let me think."
    assert [c.signature for c in chunks if c.signature] == [SIGNATURE]
    first_text = next(i for i, c in enumerate(chunks) if c.text)
    assert all(not c.thinking for c in chunks[first_text:])
    assert (result.thinking, result.signature) == ("Let me think.", SIGNATURE)


async def test_cache_tokens_in_usage() -> None:
    """cache_read / cache_creation input tokens are in Usage, and in prompt_tokens."""
    async with serve("prompt_tokens=10,cache_read=100,cache_write=20,completion_tokens=4") as s:
        result = await lb_of({"a": s}).complete(HI)
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (130, 4)
    assert (result.usage.cache_read_tokens, result.usage.cache_write_tokens) == (100, 20)


async def test_prefill_is_continued() -> None:
    """A trailing assistant message is continued: only the rest of the answer comes."""
    async with serve() as s:
        messages = [*HI, {"role": "assistant", "content": "Hello from the "}]
        chunks = await collect(member_of(s), messages=messages)
        # The API refuses a prefill ending in whitespace: it is trimmed, and the space
        # the continuation starts with is not sent twice.
        assert s.requests[-1]["messages"][-1] == {"role": "assistant", "content": "Hello from the"}
    assert "".join(c.text for c in chunks) == "simulated backend."


# -- reading answers ----------------------------------------------------------------------------


async def test_malformed_event_skipped_and_counted() -> None:
    """An event that is not JSON is skipped and counted on the next chunk."""
    async with serve("malformed") as s:
        chunks = await collect(member_of(s))
    assert sum(c.malformed for c in chunks) == 1
    assert "".join(c.text for c in chunks) == "Hello from the simulated backend."


async def test_end_without_message_stop_or_stop_reason_is_network_error() -> None:
    """A stream that ends with neither message_stop nor a stop_reason is interrupted."""
    async with serve("no_finish") as s:
        err = await failure(member_of(s))
    assert err.network and err.status is None


async def test_stop_reason_without_message_stop_is_complete() -> None:
    """A stream that ends after message_delta's stop_reason is a whole answer."""
    async with serve("no_done") as s:
        chunks = await collect(member_of(s))
    assert chunks[-1].finish_reason == "stop"


async def test_json_answer_to_a_streaming_request() -> None:
    """A server that ignores stream answers one Message: read whole."""
    async with serve("ignore_stream,thinking=hm,cache_read=3") as s:
        [chunk] = await collect(member_of(s))
    assert (chunk.text, chunk.thinking, chunk.signature) == (
        "Hello from the simulated backend.",
        "hm",
        SIGNATURE,
    )
    assert chunk.finish_reason == "stop"
    assert chunk.usage is not None and chunk.usage.cache_read_tokens == 3


async def test_html_answer_is_an_error() -> None:
    """A 200 that is neither an event stream nor JSON is a TransportError that says so."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html>login</html>", content_type="text/html")

    app = web.Application()
    app.router.add_post("/v1/messages", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        err = await failure(member_of(f"http://127.0.0.1:{port}"))
    finally:
        await runner.cleanup()
    assert "answered text/html, not an event stream" in err.message


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
async def test_http_errors_carry_status_and_type(status: int, kind: str) -> None:
    """An Anthropic error body gives the status and the error type as the code."""
    async with serve(f"status={status},retry_after=3") as s:
        err = await failure(member_of(s))
    assert (err.status, err.code, err.retry_after, err.network) == (status, kind, 3.0, False)
    assert err.message == f"simulated {status} error"


async def test_prompt_too_long_is_the_context_window_case() -> None:
    """A 400 saying "prompt is too long" carries code context_length_exceeded."""
    async with serve("status=400,error_code=context_length_exceeded") as s:
        err = await failure(member_of(s))
    assert (err.status, err.code) == (400, "context_length_exceeded")


async def test_key_never_in_error_message() -> None:
    """An error that quotes the key back carries no part of it."""
    key = "sk-ant-quoted-back-by-the-provider-9876"
    async with serve("status=401,echo_key") as s:
        err = await failure(member_of(s, key=key))
        assert s.api_keys[-1] == key
    assert key not in err.message and key[:12] not in err.message


async def test_error_event_in_stream() -> None:
    """event: error with overloaded_error is a TransportError with status 529."""
    async with serve("stream_error_after=0") as s:
        err = await failure(member_of(s))
    assert (err.status, err.code, err.network) == (529, "overloaded_error", False)


def test_rate_limit_headers() -> None:
    """The anthropic-ratelimit-* headers are picked out of a response's headers (the one
    reader both transports use, lbprovider.headroom.limit_headers)."""
    from lbprovider.headroom import limit_headers

    headers = {
        "Anthropic-RateLimit-Requests-Remaining": "9",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:00Z",
        "retry-after": "2",
        "content-type": "text/event-stream",
    }
    assert limit_headers(headers) == {
        "anthropic-ratelimit-requests-remaining": "9",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:00Z",
    }


# -- the routing rules over Anthropic members -------------------------------------------------


async def test_429_with_retry_after_retried_then_failed_over() -> None:
    """A 429 rate_limit_error is retried after its retry-after, then the next member serves."""
    async with serve("status=429,retry_after=2") as a, serve() as b:
        provider = make_lb({"a": a, "b": b}, clock=(clock := FakeClock()), provider=ANTHROPIC)
        result = await provider.complete(HI)
    assert (result.backend, a.hits, b.hits) == ("b", 2, 1)
    assert clock.slept == [2.0]


async def test_529_is_retryable() -> None:
    """A 529 overloaded_error is retried on the same member like a 503."""
    async with serve("fail_first=1,fail_status=529") as a, serve() as b:
        result = await lb_of({"a": a, "b": b}).complete(HI)
    assert (result.backend, a.hits, b.hits) == ("a", 2, 0)


async def test_prompt_too_long_moves_on_as_request_specific() -> None:
    """A context-window 400 moves on at once without a breaker failure."""
    async with serve("status=400,error_code=context_length_exceeded") as a, serve() as b:
        provider = lb_of(
            {"a": a, "b": b}, circuit_breaker_enabled=True, circuit_breaker_failure_threshold=1
        )
        trace = RequestTrace()
        await provider.complete_traced(HI, trace)
        assert (trace.backend, a.hits) == ("b", 1)
        assert trace.failures[0].kind is FailureKind.REQUEST
        assert provider.stats()["circuitBreakerStates"]["a"]["state"] == "closed"


async def test_401_moves_on_at_once() -> None:
    """A 401 authentication_error is not retried."""
    async with serve("status=401") as a, serve() as b:
        trace = RequestTrace()
        await lb_of({"a": a, "b": b}).complete_traced(HI, trace)
    assert (trace.backend, a.hits, trace.failures[0].kind) == ("b", 1, FailureKind.IMMEDIATE)


async def test_error_event_mid_stream_fails_over_a_non_streaming_caller() -> None:
    """An in-stream error after text: complete() gets one whole answer from the next member."""
    async with serve("stream_error_after=2,text=partial answer") as a, serve() as b:
        result = await lb_of({"a": a, "b": b}).complete(HI)
    assert (result.backend, result.text) == ("b", "Hello from the simulated backend.")


async def test_error_event_mid_stream_interrupts_a_streaming_caller() -> None:
    """After text reached a streaming caller, an in-stream error is an interruption."""
    async with serve("stream_error_after=2") as a, serve() as b:
        provider = lb_of({"a": a, "b": b})
        with pytest.raises(StreamInterruptedError) as info:
            _ = [c async for c in provider.stream(HI)]
    assert info.value.member == "a" and "Overloaded" in str(info.value)
    assert b.hits == 0


# -- pass-through ----------------------------------------------------------------------------


async def test_pass_through_sends_the_client_body_and_returns_the_events() -> None:
    """A Messages request goes out as sent (but model and stream), with the client's
    anthropic-* headers, and the member's events ride back on the chunks in order."""
    client = {
        "model": "claude-client-alias",
        "max_tokens": 500,
        "system": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "thinking": {"type": "enabled", "budget_tokens": 256},
        "metadata": {"user_id": "session-1"},
    }
    wire = Wire(
        Api.ANTHROPIC_MESSAGES,
        client,
        {"anthropic-beta": "x", "anthropic-version": "2023-01-01", "x-api-key": "sk-client"},
    )
    async with serve("thinking=hm,chunks=2") as s:
        provider = lb_of({"a": s})
        chunks = [c async for c in provider.stream_traced(HI, RequestTrace(), wire=wire)]
        body, headers = s.requests[-1], s.headers[-1]
    assert body == {**client, "model": "model-a", "stream": True}
    assert (headers["anthropic-beta"], headers["anthropic-version"]) == ("x", "2023-01-01")
    assert headers["x-api-key"] == ENGINE_KEY  # the member's key, never the client's
    events = [e for c in chunks for e in c.wire]
    types = [e["type"] for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("content_block_start") == 2 and "ping" in types
    assert chunks[0].wire[0]["type"] == "message_start" and chunks[0].is_content


async def test_pass_through_lowers_max_tokens_above_the_cap() -> None:
    """Only a max_tokens above the member's cap changes in a passed-through body."""
    wire = Wire(Api.ANTHROPIC_MESSAGES, {"model": "x", "max_tokens": 32000, "messages": HI})
    async with serve() as s:
        await collect(member_of(s, max_output_tokens=2048), wire=wire)
        assert s.requests[-1]["max_tokens"] == 2048


async def test_openai_wire_is_translated_for_an_anthropic_member() -> None:
    """A request in OpenAI form reaching an Anthropic member is translated, not passed."""
    wire = Wire(Api.OPENAI_CHAT, {"model": "x", "messages": HI, "frequency_penalty": 1})
    async with serve() as s:
        chunks = await collect(member_of(s), wire=wire)
        assert "frequency_penalty" not in s.requests[-1]
    assert not any(c.wire for c in chunks)


# -- members, transports, processes -------------------------------------------------------------


def test_anthropic_members_are_native_by_default(write_profile: WriteProfile) -> None:
    """provider anthropic → native (litellm still selectable); member_api names the API."""
    from lbprovider.profiles.store import ProfileStore

    write_profile("c", {**member(), "provider": ANTHROPIC})
    write_profile("l", {**member(transport="litellm"), "provider": ANTHROPIC})
    write_profile("o", member())
    write_profile("lbx", lb(["c", "l", "o"]))
    config = ProfileStore().load_loadbalancer("lbx")
    assert [m.transport for m in config.members] == ["native", "litellm", "native"]
    assert [member_api(m) for m in config.members] == [
        Api.ANTHROPIC_MESSAGES,
        None,
        Api.OPENAI_CHAT,
    ]
    transports = TransportSet()
    assert isinstance(transports.for_member(config.members[0]), AnthropicTransport)
    assert type(transports.for_member(config.members[2])).__name__ == "NativeTransport"


@pytest.mark.parametrize("inline", [False, True])
def test_native_member_of_another_provider_is_refused(
    write_profile: WriteProfile, inline: bool
) -> None:
    """transport native on a provider it does not speak is an error naming the field."""
    from lbprovider.profiles.store import ProfileStore

    bad = {**member(transport="native"), "provider": "gemini"}
    if inline:
        path = write_profile("lbx", lb([{**bad, "name": "g"}, "o"]))
        write_profile("o", member())
        with pytest.raises(ProfileValidationError) as info:
            ProfileStore().load_loadbalancer("lbx")
        assert info.value.field == "profiles[0].ephemeralSettings.transport"
    else:
        path = write_profile("g", bad)
        with pytest.raises(ProfileValidationError) as info:
            ProfileStore().load("g")
        assert info.value.field == "ephemeralSettings.transport"
    assert info.value.file == path


def test_transport_set_refuses_a_native_member_it_cannot_speak() -> None:
    """A Member built in code with native + another provider is a ConfigError too."""
    m = Member("g", "gemini", "x", None, None, {}, transport=TransportKind.NATIVE)
    with pytest.raises(ConfigError):
        TransportSet().for_member(m)


async def test_the_official_sdk_parses_the_sim() -> None:
    """The anthropic SDK (test-only) reads the sim's stream: its events are the real ones."""
    anthropic = pytest.importorskip("anthropic")
    async with serve("thinking=hm,cache_read=2") as s:
        client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{s.port}", api_key="k")
        async with client.messages.stream(
            model="claude-sim", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            message = await stream.get_final_message()
        await client.close()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "Hello from the simulated backend."  # type: ignore[union-attr]
    assert (message.stop_reason, message.usage.cache_read_input_tokens) == ("end_turn", 2)


def test_sim_cli_accepts_api() -> None:
    """`lbprovider sim --api anthropic` runs and says which API in its line."""
    from lbprovider.cli import cli

    result = CliRunner().invoke(cli, ["sim", "--api", "anthropic", "--for", "0.05"])
    assert result.exit_code == 0, result.output
    assert "api: anthropic" in result.output and "/v1" in result.output


DRIVER = textwrap.dedent(
    """
    import atexit, sys
    def report():
        heavy = sorted(m for m in ("litellm", "openai", "anthropic") if m in sys.modules)
        sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
    atexit.register(report)
    from lbprovider.cli import main
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_native_anthropic_chat_imports_no_sdk(write_profile: WriteProfile, isolated: Path) -> None:
    """A `chat` over native Anthropic members imports neither litellm nor any SDK."""
    from lbprovider.sim import serve_in_thread

    with serve_in_thread() as s:
        write_profile("a", {**member(base_url=s.url), "provider": ANTHROPIC})
        write_profile("b", {**member(base_url=s.url), "provider": ANTHROPIC})
        write_profile("duo", lb(["a", "b"]))
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, "chat", "-p", "duo", "hello"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert s.hits == 1 and s.headers[-1]["x-api-key"] == SIM_KEY
    assert proc.returncode == 0, proc.stderr
    assert "Hello from the simulated backend." in proc.stdout
    assert "HEAVY=\n" in proc.stderr
    assert "Unclosed" not in proc.stderr
