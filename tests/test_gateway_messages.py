"""``POST /v1/messages`` end to end, with the official ``anthropic`` SDK as the client
(SPEC §11.3): OpenAI members over simulated backends get the translated request; an
Anthropic member is played by a transport that replays what the Anthropic transport hands
the engine (its own events on the chunks), since the gateway's side is what is tested."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import pytest

from lbprovider.config import Member
from lbprovider.gateway.messages import count_tokens
from lbprovider.gateway.served import Alias
from lbprovider.gateway.server import GatewayServer
from lbprovider.sim import SimServer
from lbprovider.transport import Chunk, Usage, Wire
from tests.conftest import WriteProfile, lb, member
from tests.gateway_support import GW_KEY, StartGateway, gateway

SIM_TEXT = "Hello from the simulated backend."
TOOLS = [
    {
        "name": "weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()

Start = Callable[..., Awaitable[GatewayServer]]
__all__ = ["gateway"]  # the fixture, imported for pytest


@dataclass
class Replay:
    """A transport whose every answer is the same chunks (a member the test scripts
    chunk by chunk); records each call's wire request."""

    chunks: list[Chunk]
    then: Exception | None = None
    wires: list[Wire | None] = field(default_factory=list)
    messages: list[list[dict[str, Any]]] = field(default_factory=list)

    async def warm_up(self) -> None:
        """Nothing to warm."""

    async def stream(
        self,
        member: Member,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        wire: Wire | None = None,
    ) -> AsyncIterator[Chunk]:
        """The scripted chunks, named after ``member``."""
        self.wires.append(wire)
        self.messages.append([dict(m) for m in messages])
        for chunk in self.chunks:
            yield Chunk(
                text=chunk.text,
                tool_calls=chunk.tool_calls,
                finish_reason=chunk.finish_reason,
                usage=chunk.usage,
                backend=member.name,
                model=member.litellm_model,
                thinking=chunk.thinking,
                signature=chunk.signature,
                wire=chunk.wire,
            )


@pytest.fixture
def start(gateway: StartGateway) -> Start:
    """In-process gateways (tests.gateway_support), ``claude-*`` aliased to ``coding``."""

    async def run(**options: Any) -> GatewayServer:
        options.setdefault("aliases", [Alias("claude-*", "coding")])
        return await gateway(**options)

    return run


def coding(write_profile: WriteProfile, *urls: str, model: str = "sim-model") -> None:
    """Load balancer ``coding`` over one member per URL, one attempt each."""
    names = []
    for i, url in enumerate(urls):
        write_profile(f"m{i}", member(url, model=model))
        names.append(f"m{i}")
    write_profile("coding", lb(names, policy="roundrobin", failover_retry_count=1))


Client = Callable[..., anthropic.AsyncAnthropic]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """The official SDK pointed at a gateway, without its own retries; closed at the end."""
    made: list[anthropic.AsyncAnthropic] = []

    def make(gw: GatewayServer, key: str = GW_KEY, **options: Any) -> anthropic.AsyncAnthropic:
        sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0, **options)
        made.append(sdk)
        return sdk

    yield make
    for sdk in made:
        await sdk.close()


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """One simulated OpenAI-compatible backend."""
    async with SimServer() as server:
        yield server


# --- an OpenAI member: translated -------------------------------------------------------


async def test_create_translates_system_blocks_and_answers(
    start: Start, sim: SimServer, write_profile: WriteProfile, client: Client
) -> None:
    """A non-streaming request: system blocks keep cache_control for the member, and the
    answer is a message naming the serving member's model, with usage and headers."""
    coding(write_profile, sim.url)
    gw = await start()
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    raw = await client(gw).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "hi"}],
    )
    message = await raw.parse()
    assert raw.headers["x-lbprovider-backend"] == "m0"
    assert message.model == "openai/sim-model" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == SIM_TEXT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 12 and message.usage.output_tokens == 5
    sent = sim.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": system}
    assert sent["max_tokens"] == 64


async def test_stream_helper_to_an_openai_member(
    start: Start, sim: SimServer, write_profile: WriteProfile, client: Client
) -> None:
    """``messages.stream``: text deltas and a final message the SDK accumulated."""
    coding(write_profile, sim.url)
    gw = await start()
    async with client(gw).messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == SIM_TEXT
    assert final.model == "openai/sim-model" and final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 12 and final.usage.output_tokens == 5


async def test_create_stream_true_event_sequence(
    start: Start, sim: SimServer, write_profile: WriteProfile, client: Client
) -> None:
    """``create(stream=True)``: the raw event sequence of a text answer."""
    coding(write_profile, sim.url)
    gw = await start()
    stream = await client(gw).messages.create(
        model="coding", max_tokens=64, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


@pytest.mark.parametrize("streaming", [False, True])
async def test_tools_both_ways(
    start: Start, write_profile: WriteProfile, streaming: bool, client: Client
) -> None:
    """A tool call comes back as a tool_use block; its tool_result goes to the member as a
    ``tool`` message, and the member's text answer comes back."""
    async with SimServer("tool_call") as sim:
        coding(write_profile, sim.url)
        gw = await start()
        sdk = client(gw)
        asked: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
        fields: dict[str, Any] = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64,
            "tools": TOOLS,
            "tool_choice": {"type": "any"},
        }
        if streaming:
            async with sdk.messages.stream(messages=asked, **fields) as stream:
                first = await stream.get_final_message()
        else:
            first = await sdk.messages.create(messages=asked, **fields)
        assert first.stop_reason == "tool_use"
        call = first.content[-1]
        assert (
            call.type == "tool_use" and call.name == "weather" and call.input == {"city": "Paris"}
        )
        assert sim.requests[-1]["tools"][0]["function"]["name"] == "weather"
        assert sim.requests[-1]["tool_choice"] == "required"

        asked += [
            {
                "role": "assistant",
                "content": [block.model_dump(exclude_none=True) for block in first.content],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ]
        second = await sdk.messages.create(messages=asked, **fields)
        assert second.content[0].type == "text" and second.content[0].text == SIM_TEXT
        sent = sim.requests[-1]["messages"]
        assert sent[-2]["tool_calls"][0]["id"] == call.id
        assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


async def test_images_reach_the_member_as_data_urls(
    start: Start, sim: SimServer, write_profile: WriteProfile, client: Client
) -> None:
    """A base64 image block becomes an ``image_url`` part with a data URL."""
    coding(write_profile, sim.url)
    gw = await start()
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    await client(gw).messages.create(
        model="coding",
        max_tokens=16,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "what is it?"}]}],  # type: ignore[list-item]
    )
    parts = sim.requests[-1]["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert parts[1] == {"type": "text", "text": "what is it?"}


async def test_hosted_tools_are_dropped_and_said(
    start: Start, sim: SimServer, write_profile: WriteProfile, client: Client
) -> None:
    """A hosted tool never reaches an OpenAI member; the dropped header names it."""
    coding(write_profile, sim.url)
    gw = await start()
    raw = await client(gw).messages.with_raw_response.create(
        model="coding",
        max_tokens=16,
        tools=[*TOOLS, {"type": "web_search_20250305", "name": "web_search"}],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "hi"}],
    )
    assert raw.headers["x-lbprovider-dropped-tools"] == "web_search_20250305"
    assert [t["function"]["name"] for t in sim.requests[-1]["tools"]] == ["weather"]


# --- usage with cache tokens, thinking, and an Anthropic member ---------------------------

CACHED = Usage(prompt_tokens=100, completion_tokens=7, cache_read_tokens=60, cache_write_tokens=30)
THINKING = [
    Chunk(thinking="Let me think."),
    Chunk(signature="c2lnbmF0dXJl"),
    Chunk(text="Done."),
    Chunk(finish_reason="stop", usage=CACHED),
]


@pytest.mark.parametrize("streaming", [False, True])
async def test_thinking_and_cache_usage(
    start: Start, write_profile: WriteProfile, streaming: bool, client: Client
) -> None:
    """Thinking with its signature comes first; usage splits the cached tokens out."""
    coding(write_profile, "http://127.0.0.1:9/v1")
    gw = await start(provider_kwargs={"transport": Replay(THINKING)})
    fields: dict[str, Any] = {
        "model": "coding",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if streaming:
        async with client(gw).messages.stream(**fields) as stream:
            message = await stream.get_final_message()
    else:
        message = await client(gw).messages.create(**fields)
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature == "c2lnbmF0dXJl"
    assert text.type == "text" and text.text == "Done."
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (10, 7)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (60, 30)


def member_events() -> list[dict[str, Any]]:
    """What an Anthropic member streams: a cited text block, then the end."""
    citation = {
        "type": "char_location",
        "cited_text": "Paris",
        "document_index": 0,
        "document_title": "atlas",
        "start_char_index": 0,
        "end_char_index": 5,
    }
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_from_member",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5-20250929",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": 50},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Paris."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "citations_delta", "citation": citation},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 4},
        },
        {"type": "message_stop"},
    ]


def passthrough_chunks(events: list[dict[str, Any]]) -> list[Chunk]:
    """The chunks the Anthropic transport makes of ``events`` (each carries its own)."""
    return [
        Chunk(text="Paris.", wire=tuple(events[:3])),
        Chunk(wire=tuple(events[3:5])),
        Chunk(finish_reason="stop", usage=Usage(53, 4, 50, 0), wire=tuple(events[5:])),
    ]


@pytest.mark.parametrize("streaming", [False, True])
async def test_anthropic_member_passes_through(
    start: Start, write_profile: WriteProfile, streaming: bool, client: Client
) -> None:
    """The member gets the client's own body and beta header; the client gets the member's
    content as it was sent (citations, id), ``model`` naming the serving member."""
    coding(write_profile, "http://127.0.0.1:9/v1", model="claude-sonnet-4-5-20250929")
    replay = Replay(passthrough_chunks(member_events()))
    gw = await start(provider_kwargs={"transport": replay})
    sdk = client(gw, default_headers={"anthropic-beta": "interleaved-thinking-2025-05-14"})
    fields: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "extra_body": {"top_k": 5},  # this SDK release has no top_k argument
        "metadata": {"user_id": "user-1"},
        "messages": [{"role": "user", "content": "capital of France?"}],
    }
    if streaming:
        async with sdk.messages.stream(**fields) as stream:
            message = await stream.get_final_message()
    else:
        message = await sdk.messages.create(**fields)
    assert message.id == "msg_from_member"
    assert message.model == "openai/claude-sonnet-4-5-20250929"
    text = message.content[0]
    assert text.type == "text" and text.text == "Paris." and text.citations
    assert text.citations[0].cited_text == "Paris"
    assert message.usage.cache_read_input_tokens == 50 and message.usage.output_tokens == 4
    wire = replay.wires[-1]
    assert wire is not None
    assert wire.body["top_k"] == 5 and wire.body["metadata"] == {"user_id": "user-1"}
    assert wire.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert wire.headers["anthropic-version"]  # the SDK's own version, as it sent it


# --- nothing can serve, and a stream that breaks -----------------------------------------


@pytest.mark.parametrize(
    ("behavior", "status", "error_type", "retry_after"),
    [
        ("status=503,retry_after=7", 503, "overloaded_error", "7"),
        ("status=429,retry_after=20", 429, "rate_limit_error", "20"),
        ("status=401", 401, "authentication_error", None),
        ("status=400", 400, "invalid_request_error", None),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
async def test_nothing_can_serve_is_a_real_status(
    start: Start,
    write_profile: WriteProfile,
    behavior: str,
    status: int,
    error_type: str,
    retry_after: str | None,
    streaming: bool,
    client: Client,
) -> None:
    """No member could serve: a real status in Anthropic's error form, ``retry-after``
    when retrying later helps; the SDK raises its status error, streaming or not."""
    async with SimServer(behavior) as sim:
        coding(write_profile, sim.url)
        gw = await start()
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client(gw).messages.create(
                model="coding",
                max_tokens=16,
                messages=[{"role": "user", "content": "hi"}],
                stream=streaming,
            )
    error = caught.value
    assert error.status_code == status
    assert isinstance(error.body, dict) and error.body["type"] == "error"
    assert error.body["error"]["type"] == error_type
    if retry_after is not None:
        # The member's own wait, capped at 30 s.
        assert error.response.headers["retry-after"] == retry_after
    else:
        assert "retry-after" not in error.response.headers


async def test_interruption_after_the_start_is_an_error_event(
    start: Start, write_profile: WriteProfile, client: Client
) -> None:
    """A stream cut after it started, with no member to continue it: ``event: error``
    with ``overloaded_error``, which the SDK raises, after the text already sent."""
    async with SimServer("drop_after=2") as sim:
        coding(write_profile, sim.url)
        gw = await start()
        seen: list[str] = []
        stream = await client(gw).messages.create(
            model="coding", max_tokens=16, messages=[{"role": "user", "content": "hi"}], stream=True
        )

        async def drain() -> None:
            async for event in stream:
                seen.append(event.type)

        with pytest.raises(anthropic.APIStatusError) as caught:
            await drain()
    assert seen[0] == "message_start" and "content_block_delta" in seen
    assert "message_stop" not in seen
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("key", "model", "status", "error_type"),
    [
        ("wrong-key", "coding", 401, "authentication_error"),
        (GW_KEY, "gpt-4o", 404, "not_found_error"),
    ],
)
async def test_gateway_refusals_in_anthropic_form(
    start: Start,
    sim: SimServer,
    write_profile: WriteProfile,
    key: str,
    model: str,
    status: int,
    error_type: str,
    client: Client,
) -> None:
    """A wrong gateway key and an unserved model answer in Anthropic's error form."""
    coding(write_profile, sim.url)
    gw = await start()
    with pytest.raises(anthropic.APIStatusError) as caught:
        await client(gw, key).messages.create(
            model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == error_type
    assert sim.hits == 0


@pytest.mark.parametrize(
    ("path", "sent", "field"),
    [
        (
            "/v1/messages",
            {"model": "coding", "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        (
            "/v1/messages",
            {"model": "coding", "max_tokens": 5, "messages": [{"role": "user"}]},
            "messages[0].content",
        ),
        ("/v1/messages/count_tokens", {"model": "coding"}, "messages"),
    ],
)
async def test_missing_fields_are_400_naming_them(
    start: Start,
    sim: SimServer,
    write_profile: WriteProfile,
    path: str,
    sent: dict[str, Any],
    field: str,
) -> None:
    """A body missing a required field: 400 ``invalid_request_error`` naming it."""
    coding(write_profile, sim.url)
    gw = await start()
    async with (
        aiohttp.ClientSession() as http,
        http.post(gw.url + path, json=sent, headers={"x-api-key": GW_KEY}) as response,
    ):
        body = await response.json()
    assert response.status == 400
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert field in body["error"]["message"]
    assert sim.hits == 0


# --- count_tokens -------------------------------------------------------------------------


async def test_count_tokens(
    start: Start, sim: SimServer, write_profile: WriteProfile, client: Client
) -> None:
    """``messages.count_tokens`` answers the TPM estimate, without calling any member."""
    coding(write_profile, sim.url)
    gw = await start()
    fields: dict[str, Any] = {
        "model": "claude-opus-4-1",
        "system": "You are a careful engineer. " * 10,
        "messages": [{"role": "user", "content": "Refactor this function. " * 20}],
        "tools": TOOLS,
    }
    counted = await client(gw).messages.count_tokens(**fields)
    assert counted.input_tokens == count_tokens(fields)["input_tokens"] > 100
    assert sim.hits == 0
    with pytest.raises(anthropic.NotFoundError):
        await client(gw).messages.count_tokens(**{**fields, "model": "gpt-4o"})
