"""The gateway in front of native Anthropic members (SPEC §4.2, §11.3), over the Anthropic
sim: pass-through for Anthropic-form requests, translation for OpenAI-form ones."""

from __future__ import annotations

import copy
from typing import Any

import anthropic
import openai
import pytest

from lbprovider.sim import SIGNATURE, SimServer, serve
from tests.conftest import WriteProfile, lb
from tests.gateway_support import GW_KEY, StartGateway, gateway

__all__ = ["gateway"]  # the fixture, imported for pytest

CLAUDE_CODE_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 16000,  # the SDK insists on streaming above about 21000
    "system": [
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Project rules...", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "fix the bug", "cache_control": {"type": "ephemeral"}}
            ],
        }
    ],
    "thinking": {"type": "enabled", "budget_tokens": 4000},
    "metadata": {"user_id": "user_abc_session_1"},
    "tools": [
        {
            "name": "Read",
            "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
    ],
}


def anthropic_member(url: str, **settings: Any) -> dict[str, Any]:
    """A native Anthropic member profile for a sim."""
    return {
        "version": 1,
        "provider": "anthropic",
        "model": "claude-member",
        "ephemeralSettings": {"base-url": url, "auth-key": "sk-ant-member-key-0001", **settings},
    }


def setup(write_profile: WriteProfile, sims: dict[str, SimServer], **settings: Any) -> None:
    """Load balancer `coding` over Anthropic members."""
    for name, sim in sims.items():
        write_profile(name, anthropic_member(sim.url))
    settings.setdefault("failover_retry_count", 1)
    write_profile("coding", lb(list(sims), "failover", failback_after_ms=0, **settings))


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_code_request_passes_through(
    write_profile: WriteProfile, gateway: StartGateway, stream: bool
) -> None:
    """The member receives the client's body (cache_control, thinking, metadata, tools) and
    its anthropic-beta / anthropic-version headers; only model (and stream) change."""
    async with serve("thinking=let me see,cache_read=50") as a, serve() as b:
        setup(write_profile, {"a": a, "b": b})
        write_profile("a", anthropic_member(a.url, **{"max-output-tokens": 8000}))
        gw = await gateway(default="coding")
        sdk = anthropic.AsyncAnthropic(
            base_url=gw.url,
            api_key=GW_KEY,
            max_retries=0,
            default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"},
        )
        body = copy.deepcopy(CLAUDE_CODE_BODY)
        fields = dict(body)
        if stream:
            async with sdk.messages.stream(**fields) as events:
                message = await events.get_final_message()
        else:
            message = await sdk.messages.create(**fields)
        received = a.requests[-1]
        expected = {**CLAUDE_CODE_BODY, "model": "claude-member", "max_tokens": 8000}
        expected["stream"] = True  # the engine reads every answer as a stream
        assert received == expected
        headers = {k.lower(): v for k, v in a.headers[-1].items()}
        assert headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
        assert headers["anthropic-version"]  # the client's own
        assert headers["x-api-key"] == "sk-ant-member-key-0001"  # the member's key
        assert message.model == "anthropic/claude-member"
        kinds = [block.type for block in message.content]
        assert kinds == ["thinking", "text"]
        assert message.content[0].signature == SIGNATURE  # type: ignore[union-attr]
        assert message.content[0].thinking == "let me see"  # type: ignore[union-attr]
        assert message.usage.cache_read_input_tokens == 50
        assert b.hits == 0
        await sdk.close()


async def test_failover_between_anthropic_members(
    write_profile: WriteProfile, gateway: StartGateway
) -> None:
    """An overloaded (529) first member: the next serves, and the headers say so."""
    async with serve("status=529") as a, serve("text=from b") as b:
        setup(write_profile, {"a": a, "b": b})
        gw = await gateway(default="coding")
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=GW_KEY, max_retries=0)
        raw = await sdk.messages.with_raw_response.create(
            model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-lbprovider-backend"] == "b"
        assert (await raw.parse()).content[0].text == "from b"  # type: ignore[union-attr]
        await sdk.close()


async def test_all_overloaded_is_529(write_profile: WriteProfile, gateway: StartGateway) -> None:
    """Every member answering 529: the client gets 529 overloaded_error."""
    async with serve("status=529") as a, serve("status=529") as b:
        setup(write_profile, {"a": a, "b": b})
        gw = await gateway(default="coding")
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=GW_KEY, max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as caught:
            await sdk.messages.create(
                model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 529
        assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
        await sdk.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_request_to_an_anthropic_member(
    write_profile: WriteProfile, gateway: StartGateway, stream: bool
) -> None:
    """An OpenAI-form request is translated for an Anthropic member, and the answer back."""
    async with serve("tool_call") as a, serve() as b:
        setup(write_profile, {"a": a, "b": b})
        gw = await gateway()
        api = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=GW_KEY, max_retries=0)
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ]
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "weather in Paris?"},
        ]
        if stream:
            events = await api.chat.completions.create(
                model="coding",
                messages=messages,
                tools=tools,
                stream=True,  # type: ignore[arg-type]
            )
            names = [
                d.function.name
                async for c in events
                if c.choices
                for d in (c.choices[0].delta.tool_calls or [])
                if d.function and d.function.name
            ]
            assert names == ["get_weather"]
        else:
            done = await api.chat.completions.create(
                model="coding",
                messages=messages,
                tools=tools,  # type: ignore[arg-type]
            )
            assert done.model == "anthropic/claude-member"
            assert done.choices[0].finish_reason == "tool_calls"
            call = done.choices[0].message.tool_calls[0]  # type: ignore[index]
            assert call.function.name == "get_weather"  # type: ignore[union-attr]
        sent = a.requests[-1]
        assert sent["system"] == "be brief"
        assert sent["tools"][0]["name"] == "get_weather"
        assert sent["messages"] == [{"role": "user", "content": "weather in Paris?"}]
        await api.close()


# The shape of Claude Code 2.1.332's request with its default model (seen with the real
# client against the gateway, 2026-12-04): a mid-conversation system message, adaptive
# thinking, context management, output_config, a JSON metadata.user_id, beta features in
# the header and `?beta=true` on the path.
CLAUDE_CODE_2_1_332: dict[str, Any] = {
    "model": "claude-opus-5-5",
    "max_tokens": 128000,
    "stream": True,
    "system": [{"type": "text", "text": "You are a coding assistant."}],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}
            ],
        },
    ],
    "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "medium"},
    "metadata": {"user_id": '{"device_id":"d","account_uuid":"","session_id":"s-1"}'},
}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_claude_code_2_1_332_request(
    write_profile: WriteProfile, gateway: StartGateway, provider: str
) -> None:
    """Claude Code's newest request is served: passed through to an Anthropic member as
    sent (the mid-conversation system message included), translated for an OpenAI one."""
    import aiohttp

    from tests.conftest import member

    async with serve() as a, serve() as b:
        for name, sim in (("a", a), ("b", b)):
            if provider == "anthropic":
                write_profile(name, anthropic_member(sim.url))
            else:
                write_profile(name, member(sim.url, model="gpt-member"))
        write_profile("coding", lb(["a", "b"], "failover", failback_after_ms=0))
        gw = await gateway(default="coding")
        headers = {
            "x-api-key": GW_KEY,
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "claude-code-20250219,context-management-2025-06-27",
            "X-Claude-Code-Session-Id": "s-1",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gw.url}/v1/messages?beta=true", json=CLAUDE_CODE_2_1_332, headers=headers
            ) as response,
        ):
            assert response.status == 200, await response.text()
            events = [
                line[7:]
                for line in (await response.text()).splitlines()
                if line.startswith("event: ")
            ]
        assert events[0] == "message_start" and events[-1] == "message_stop"
        received = a.requests[-1]
        if provider == "anthropic":
            assert received == {**CLAUDE_CODE_2_1_332, "model": "claude-member"}
        else:
            assert [m["role"] for m in received["messages"]] == ["system", "user", "system"]
            assert "thinking" not in received and "output_config" not in received
