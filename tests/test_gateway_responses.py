"""``POST /v1/responses`` end to end: the official openai SDK's ``client.responses``
against ``lbprovider serve`` in process, over simulated members on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from lbprovider.gateway.server import GatewayServer, ServeOptions
from lbprovider.sim import SimServer
from tests.conftest import WriteProfile, lb, member
from tests.test_gateway_responses_form import CODEX_BODY

SERVE_KEY = "sk-gateway-test-key-responses"
WEATHER = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}

Start = Callable[..., Any]


@pytest.fixture
def start(write_profile: WriteProfile) -> Start:
    """``start("ok", "status=503")``: sims as members a, b, ... of load balancer
    ``coding``, a gateway over them, and an AsyncOpenAI client of it."""

    @asynccontextmanager
    async def run(*behaviors: str) -> AsyncIterator[tuple[openai.AsyncOpenAI, list[SimServer]]]:
        sims = [await SimServer(b).start() for b in behaviors]
        names = [chr(ord("a") + i) for i in range(len(sims))]
        for name, sim in zip(names, sims, strict=True):
            write_profile(name, member(base_url=sim.url))
        # A failover load balancer needs two members; one member is a round-robin of one.
        write_profile("coding", lb(names, policy="failover" if len(names) > 1 else "roundrobin"))
        env = {**os.environ, "LBPROVIDER_SERVE_KEY": SERVE_KEY}
        gateway = GatewayServer(ServeOptions(port=0, profiles=["coding"], drain_s=1), env=env)
        await gateway.start()
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=SERVE_KEY, max_retries=0)
        try:
            yield client, sims
        finally:
            await client.close()
            await gateway.close()
            for sim in sims:
                await sim.close()

    return run


async def test_text_answer_with_usage(start: Start) -> None:
    """A string input gets one message item, the member's model and usage."""
    async with start("text=Hello there.,chunks=3,prompt_tokens=9") as (client, sims):
        raw = await client.responses.with_raw_response.create(model="coding", input="hi")
        response = raw.parse()
    assert response.status == "completed"
    assert response.output_text == "Hello there."
    assert response.model == "openai/sim-model"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 3)
    assert response.usage.total_tokens == 12
    assert raw.headers["x-lbprovider-backend"] == "a"
    assert sims[0].requests[-1]["messages"] == [{"role": "user", "content": "hi"}]


async def test_streamed_text_through_the_sdk_event_parser(start: Start) -> None:
    """client.responses.stream: the documented events in order, a whole final response."""
    async with (
        start("text=Hello there.,chunks=3") as (client, _),
        client.responses.stream(model="coding", input="hi") as stream,
    ):
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert final.output_text == "Hello there."
    assert final.model == "openai/sim-model"
    assert final.usage is not None and final.usage.output_tokens == 3


@pytest.mark.parametrize("streaming", [False, True])
async def test_function_call_out(start: Start, streaming: bool) -> None:
    """The member's tool call comes back as a function_call item."""
    async with start("tool_call") as (client, sims):
        if streaming:
            created = await client.responses.create(
                model="coding", input="weather?", tools=[WEATHER], stream=True
            )
            events = [event async for event in created]
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert events[-1].type == "response.completed"
            response = events[-1].response
        else:
            response = await client.responses.create(
                model="coding", input="weather?", tools=[WEATHER]
            )
    (call,) = response.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == (
        "call_sim_1",
        "weather",
        '{"city": "Paris"}',
    )
    sent = sims[0].requests[-1]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": False,
            },
        }
    ]


async def test_function_call_and_output_in_reach_the_member_as_chat_messages(
    start: Start,
) -> None:
    """function_call + function_call_output items arrive as an assistant tool call and a
    tool message."""
    async with start("tool_call,text=It is sunny.") as (client, sims):
        response = await client.responses.create(
            model="coding",
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "weather?"},
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "weather",
                    "arguments": '{"city": "Paris"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            ],
        )
    assert response.output_text == "It is sunny."
    assert sims[0].requests[-1]["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


async def test_codex_shaped_request_is_served_with_the_hosted_tool_named_dropped(
    start: Start,
) -> None:
    """Instructions, developer message, function + web_search tools, reasoning, include,
    prompt_cache_key, store false: served, web_search named in the header."""
    body = {k: v for k, v in CODEX_BODY.items() if k not in ("model", "stream")}
    async with (
        start("text=Listing.") as (client, sims),
        client.responses.with_streaming_response.create(
            model="coding", stream=True, extra_headers={"session_id": "codex-1"}, **body
        ) as raw,
    ):
        assert raw.status_code == 200
        assert raw.headers["x-lbprovider-dropped-tools"] == "web_search"
        events = [event async for event in await raw.parse()]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Listing."
    sent = sims[0].requests[-1]
    assert [m["role"] for m in sent["messages"]] == ["system", "system", "user"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell"]
    assert sent["reasoning_effort"] == "medium"
    assert sent["parallel_tool_calls"] is False
    for ignored in ("store", "include", "prompt_cache_key", "instructions", "input", "text"):
        assert ignored not in sent


async def test_previous_response_id_is_refused(start: Start) -> None:
    """400 naming previous_response_id and saying to send the whole input."""
    async with start("ok") as (client, sims):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(
                model="coding", input="and then?", previous_response_id="resp_123"
            )
    assert caught.value.status_code == 400
    assert "previous_response_id" in caught.value.message
    assert "send the whole conversation" in caught.value.message
    assert sims[0].hits == 0


@pytest.mark.parametrize("streaming", [False, True])
async def test_nothing_can_serve_is_a_real_503(start: Start, streaming: bool) -> None:
    """Every member down: the SDK raises APIStatusError 503 before any event."""
    async with start("status=503", "status=503") as (client, _):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.responses.create(model="coding", input="hi", stream=streaming)
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("content-type", "").startswith("application/json")


async def test_interruption_after_the_start_ends_with_response_failed(start: Start) -> None:
    """A stream cut after its first chunks, with no member to continue: response.failed."""
    async with start("drop_after=2,chunks=5") as (client, _):
        created = await client.responses.create(model="coding", input="hi", stream=True)
        events = [event async for event in created]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.failed"
    assert "response.completed" not in kinds and "response.output_item.done" not in kinds
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
