"""The LiteLLM custom provider `lb` (SPEC §10): litellm.completion/acompletion with
model="lb/NAME", streaming and not, through failover, usage, errors and tool calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import WriteProfile, lb, member, member_provider

litellm = pytest.importorskip("litellm")
pytestmark = pytest.mark.usefixtures("both_transports")

from lbprovider.integrations.litellm_provider import handler, register  # noqa: E402

HI = [{"role": "user", "content": "hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider registered, state in memory."""
    monkeypatch.setenv("LBPROVIDER_STATE", "memory://")
    register()


@pytest.fixture
def sims() -> Iterator[dict[str, SimServer]]:
    """Backends for every case."""
    specs = {
        "bad": "status=503",
        "good": "text=hello there,prompt_tokens=9,completion_tokens=2",
        "limited": "status=429",
        "denied": "status=401",
        "rejects": "status=400",
        "missing": "status=404",
        "tools": "tool_call,text=Sunny in Paris.",
    }
    with (
        serve_in_thread(specs["bad"]) as bad,
        serve_in_thread(specs["good"]) as good,
        serve_in_thread(specs["limited"]) as limited,
        serve_in_thread(specs["denied"]) as denied,
        serve_in_thread(specs["rejects"]) as rejects,
        serve_in_thread(specs["missing"]) as missing,
        serve_in_thread(specs["tools"]) as tools,
    ):
        yield {
            "bad": bad,
            "good": good,
            "limited": limited,
            "denied": denied,
            "rejects": rejects,
            "missing": missing,
            "tools": tools,
        }


@pytest.fixture
def profiles(sims: dict[str, SimServer], write_profile: WriteProfile) -> None:
    """One member per backend; `pair` fails over bad → good; one LB per failure mode."""
    for name, server in sims.items():
        write_profile(name, member(base_url=server.url, model=f"{name}-model"))
        write_profile(f"only-{name}", lb([name], policy="roundrobin", failover_retry_count=1))
    write_profile("pair", lb(["bad", "good"], failover_retry_count=1))


def text_of(stream: Any) -> tuple[str, Any]:
    """Joined text and the last usage of a sync litellm stream."""
    texts, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None) or usage
    return "".join(texts), usage


def test_completion_after_failover(profiles: None, sims: dict[str, SimServer]) -> None:
    """litellm.completion(model="lb/pair") answers from the healthy member, with usage."""
    response = litellm.completion(model="lb/pair", messages=HI, temperature=0.2, max_tokens=9)
    assert response.choices[0].message.content == "hello there"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 2)
    assert response._hidden_params["lbprovider_backend"] == "good"
    body = sims["good"].requests[-1]
    assert (body["temperature"], body["max_tokens"]) == (0.2, 9)
    assert sims["bad"].hits == 1


def test_streaming_usage_on_final_chunk(profiles: None) -> None:
    """Streaming yields the text; usage arrives on the final chunk."""
    stream = litellm.completion(
        model="lb/pair", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    text, usage = text_of(stream)
    assert text == "hello there"
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 2)


async def test_acompletion_and_async_streaming(profiles: None) -> None:
    """acompletion works streaming and not."""
    response = await litellm.acompletion(model="lb/pair", messages=HI)
    assert response.choices[0].message.content == "hello there"
    stream = await litellm.acompletion(
        model="lb/pair", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    texts, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
        usage = getattr(chunk, "usage", None) or usage
    assert "".join(texts) == "hello there"
    assert usage.total_tokens == 11


@pytest.mark.parametrize(
    ("profile", "exc_name", "status"),
    [
        ("only-bad", "ServiceUnavailableError", 503),
        ("only-limited", "RateLimitError", 429),
        ("only-denied", "AuthenticationError", 401),
        ("only-rejects", "BadRequestError", 400),
        ("only-missing", "NotFoundError", 404),
        ("no-such-profile", "NotFoundError", 404),
    ],
)
def test_errors_map_to_litellm_classes(
    profiles: None, profile: str, exc_name: str, status: int
) -> None:
    """Engine errors become litellm's exception classes with their status codes."""
    with pytest.raises(getattr(litellm, exc_name)) as info:
        litellm.completion(model=f"lb/{profile}", messages=HI)
    assert info.value.status_code == status
    assert "sk-sim" not in str(info.value)


def test_streaming_error_maps_too(profiles: None) -> None:
    """A streaming request that nothing can serve raises the mapped class."""
    with pytest.raises(litellm.ServiceUnavailableError):
        text_of(litellm.completion(model="lb/only-bad", messages=HI, stream=True))


def test_tool_call_round_trip_streamed(profiles: None, sims: dict[str, SimServer]) -> None:
    """Tools go to the backend, tool-call deltas stream back, the result returns as history."""
    stream = litellm.completion(model="lb/only-tools", messages=HI, tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for tc in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(tc.index or 0, {"id": "", "name": "", "args": ""})
            call["id"] = tc.id or call["id"]
            call["name"] += tc.function.name or ""
            call["args"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["args"]) == {"city": "Paris"}
    assert finish == "tool_calls"
    sent_tool = sims["tools"].requests[-1]["tools"][0]
    assert sent_tool.get("name", sent_tool.get("function", {}).get("name")) == "get_weather"
    history = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": calls[0]["args"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
    ]
    text, _ = text_of(
        litellm.completion(model="lb/only-tools", messages=history, tools=TOOLS, stream=True)
    )
    assert text == "Sunny in Paris."
    sent = sims["tools"].requests[-1]["messages"]
    if member_provider() == "anthropic":  # the result travels as a tool_result block
        result = {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "sunny"}
        assert sent[-1] == {"role": "user", "content": [result]}
    else:
        assert sent[-1] == {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"}


def test_tool_call_non_stream(profiles: None) -> None:
    """Non-streaming responses carry the tool calls too."""
    response = litellm.completion(model="lb/only-tools", messages=HI, tools=TOOLS)
    call = response.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert response.choices[0].finish_reason == "tool_calls"


def test_register_is_idempotent() -> None:
    """Registering twice leaves one entry for `lb`."""
    register()
    entries = [p for p in litellm.custom_provider_map if p["provider"] == "lb"]
    assert entries == [{"provider": "lb", "custom_handler": handler}]


# -- what the handler reports (SPEC §10 v2) ------------------------------------------------


def test_response_names_the_serving_member(profiles: None) -> None:
    """`model` is the serving member's provider/model; failover shows in the headers."""
    response = litellm.completion(model="lb/pair", messages=HI)
    assert response.model == f"{member_provider()}/good-model"
    headers = response._hidden_params["additional_headers"]
    assert headers["x-litellm-attempted-fallbacks"] == 1
    # litellm prefixes every provider header but its own x-litellm-* ones.
    assert headers["llm_provider-x-lbprovider-backend"] == "good"
    direct = litellm.completion(model="lb/only-good", messages=HI)
    assert "x-litellm-attempted-fallbacks" not in direct._hidden_params["additional_headers"]


async def test_stream_chunks_name_the_serving_member(profiles: None) -> None:
    """Every streamed chunk with content names the serving member's provider/model
    (litellm's own closing chunk carries the name that was asked for)."""
    stream = await litellm.acompletion(model="lb/pair", messages=HI, stream=True)
    models = {
        chunk.model async for chunk in stream if chunk.choices and chunk.choices[0].delta.content
    }
    assert models == {f"{member_provider()}/good-model"}


async def test_failing_stream_raises_before_it_is_handed_over(profiles: None) -> None:
    """Nothing can serve: acompletion(stream=True) itself raises, with the status."""
    with pytest.raises(litellm.ServiceUnavailableError):
        await litellm.acompletion(model="lb/only-bad", messages=HI, stream=True)
    with pytest.raises(litellm.AuthenticationError):
        await litellm.acompletion(model="lb/only-denied", messages=HI, stream=True)
    with pytest.raises(litellm.BadRequestError):
        await litellm.acompletion(model="lb/only-rejects", messages=HI, stream=True)


def test_rate_limited_everywhere_is_429_with_retry_after(
    profiles: None, sims: dict[str, SimServer]
) -> None:
    """Every member rate limited with Retry-After: 429 and the seconds to wait."""
    sims["limited"].behavior = sims["limited"].behavior.parse("status=429,retry_after=22")
    with pytest.raises(litellm.RateLimitError) as info:
        litellm.completion(model="lb/only-limited", messages=HI)
    assert info.value.headers == {"retry-after": "22"}  # type: ignore[attr-defined]


def test_all_breakers_open_is_503_with_recovery_time(
    sims: dict[str, SimServer], write_profile: WriteProfile
) -> None:
    """Every member skipped by its breaker: 503 with Retry-After until the first recovers,
    at most 30 s (SPEC §3.3: a caller asks again soon)."""
    from lbprovider.provider import LoadBalancingProvider

    write_profile("bad", member(base_url=sims["bad"].url))
    write_profile("benched", lb(["bad"], policy="roundrobin", circuit_breaker_enabled=True))
    LoadBalancingProvider.from_profile("benched").bench("bad", 90)
    with pytest.raises(litellm.ServiceUnavailableError) as info:
        litellm.completion(model="lb/benched", messages=HI)
    assert int(info.value.headers["retry-after"]) == 30  # type: ignore[attr-defined]


def test_allowed_profiles_limit_what_is_served(
    profiles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LBPROVIDER_ALLOWED_PROFILES: other load balancers are not found."""
    monkeypatch.setenv("LBPROVIDER_ALLOWED_PROFILES", "only-good, pair")
    assert litellm.completion(model="lb/pair", messages=HI).choices[0].message.content
    with pytest.raises(litellm.NotFoundError, match="LBPROVIDER_ALLOWED_PROFILES"):
        litellm.completion(model="lb/only-tools", messages=HI)
