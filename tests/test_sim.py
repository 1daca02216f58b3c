"""lbprovider.sim observed through litellm itself: each behaviour and the exception it yields."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lbprovider.sim import Behavior, SimServer, serve

litellm = pytest.importorskip("litellm")
litellm.suppress_debug_info = True

MESSAGES = [{"role": "user", "content": "hi"}]
KEY = "sk-sim-test-key-000000"


async def call(server: SimServer | str, *, stream: bool = True, **kwargs: Any) -> Any:
    """One litellm call to a sim backend, as the transport will make it."""
    url = server if isinstance(server, str) else server.url
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    return await litellm.acompletion(
        model="openai/sim-model",
        messages=kwargs.pop("messages", MESSAGES),
        api_base=url,
        api_key=KEY,
        stream=stream,
        max_retries=0,
        _skip_mcp_handler=True,
        **extra,
        **kwargs,
    )


async def drain(stream: AsyncIterator[Any]) -> tuple[list[str], Any]:
    """All content deltas of a litellm stream, and the usage seen on the way."""
    texts: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return texts, usage


async def test_ok_stream_text_and_usage() -> None:
    """A healthy stream yields the text in chunks and the usage on the last chunk."""
    async with serve("chunks=4,prompt_tokens=7,completion_tokens=9") as s:
        texts, usage = await drain(await call(s))
        assert "".join(texts) == Behavior().text
        assert len(texts) == 4
        assert (usage.prompt_tokens, usage.completion_tokens) == (7, 9)
        assert s.hits == 1 and s.completed == 1
        assert s.requests[0]["stream_options"] == {"include_usage": True}
        assert s.api_keys == [KEY]


async def test_no_usage_reported() -> None:
    """With no usage from the backend, litellm substitutes its own token estimate."""
    async with serve("no_usage,prompt_tokens=999,completion_tokens=999") as s:
        texts, usage = await drain(await call(s))
        assert texts
        assert usage is not None
        assert 0 < usage.prompt_tokens < 999 and 0 < usage.completion_tokens < 999


async def test_non_stream() -> None:
    """Non-stream requests get one chat.completion object."""
    async with serve("text=hello there,prompt_tokens=3,completion_tokens=2") as s:
        resp = await call(s, stream=False)
        assert resp.choices[0].message.content == "hello there"
        assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (3, 2)


@pytest.mark.parametrize(
    ("status", "exc_name"),
    [
        (429, "RateLimitError"),
        (500, "InternalServerError"),
        (502, "BadGatewayError"),
        (503, "ServiceUnavailableError"),
        (401, "AuthenticationError"),
        (404, "NotFoundError"),
        (400, "BadRequestError"),
        (422, "BadRequestError"),
        (402, "APIError"),
        (403, "APIError"),
        (413, "APIError"),
    ],
)
async def test_status_maps_to_litellm_exception(status: int, exc_name: str) -> None:
    """Each HTTP status raises the litellm class it raises against real providers."""
    async with serve(f"status={status}") as s:
        with pytest.raises(getattr(litellm, exc_name)) as info:
            await call(s)
        assert info.value.status_code == status
        assert s.hits == 1


async def test_retry_after_header_reaches_litellm() -> None:
    """Retry-After is readable from the exception's response headers."""
    async with serve("status=429,retry_after=7") as s:
        with pytest.raises(litellm.RateLimitError) as info:
            await call(s)
        assert info.value.litellm_response_headers.get("retry-after") == "7"


@pytest.mark.parametrize(
    ("code", "exc_name"),
    [
        ("context_length_exceeded", "ContextWindowExceededError"),
        ("content_policy_violation", "ContentPolicyViolationError"),
    ],
)
async def test_request_specific_400s(code: str, exc_name: str) -> None:
    """Context-window and content-policy 400s map to litellm's specific classes — but for a
    content-policy refusal under openai 3, which litellm sees as a plain BadRequestError
    (shared/DEPENDENCIES.md: classify a 400 by status, as we do)."""
    import openai

    async with serve(f"status=400,error_code={code}") as s:
        with pytest.raises(litellm.BadRequestError) as info:
            await call(s)
    assert info.value.status_code == 400
    if not (code == "content_policy_violation" and int(openai.__version__.split(".")[0]) >= 3):
        assert isinstance(info.value, getattr(litellm, exc_name))


async def test_refused_connection() -> None:
    """A closed port surfaces as InternalServerError 500 'Connection error.'."""
    async with serve() as s:
        url = s.url
    with pytest.raises(litellm.InternalServerError) as info:
        await call(url)
    assert info.value.status_code == 500 and "Connection error" in str(info.value)


async def test_stall_before_headers_times_out() -> None:
    """A stall before the headers trips litellm's read timeout (litellm.Timeout)."""
    async with serve("stall_headers=30") as s:
        with pytest.raises(litellm.Timeout):
            await call(s, timeout=0.2)
        await s.wait_for(lambda srv: srv.disconnects == 1)


async def test_stall_before_first_chunk() -> None:
    """The role chunk arrives, then nothing; closing the stream ends the request upstream."""
    async with serve("stall_first_chunk=30") as s:
        stream = await call(s)
        first = await anext(aiter(stream))
        assert first.choices[0].delta.content in (None, "")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await anext(aiter(stream))
        await stream.aclose()
        await s.wait_for(lambda srv: srv.disconnects == 1)
        assert s.completed == 0


async def test_client_closing_early_is_seen() -> None:
    """A consumer that stops after one chunk closes the upstream connection."""
    async with serve("chunks=50,chunk_delay=0.05") as s:
        stream = await call(s)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.aclose()
        await s.wait_for(lambda srv: srv.disconnects == 1)


async def test_drop_after_n_chunks() -> None:
    """A connection cut mid-stream raises MidStreamFallbackError after the chunks sent."""
    async with serve("drop_after=2,chunks=5") as s:
        texts: list[str] = []

        async def collect() -> None:
            async for chunk in await call(s):
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)

        with pytest.raises(litellm.ServiceUnavailableError) as info:
            await collect()
        assert type(info.value).__name__ == "MidStreamFallbackError"
        assert len(texts) == 2


async def test_malformed_sse() -> None:
    """A broken SSE event raises during iteration."""
    async with serve("malformed") as s:
        with pytest.raises(litellm.ServiceUnavailableError) as info:
            await drain(await call(s))
        assert type(info.value).__name__ == "MidStreamFallbackError"


async def test_slow_chunks_all_arrive() -> None:
    """Slow chunks still deliver the whole text."""
    async with serve("chunks=3,chunk_delay=0.01") as s:
        texts, _ = await drain(await call(s))
        assert "".join(texts) == Behavior().text


async def test_fail_first_n() -> None:
    """The first N requests fail with fail_status, then the backend serves."""
    async with serve("fail_first=2,fail_status=502") as s:
        for _ in range(2):
            with pytest.raises(litellm.BadGatewayError):
                await call(s)
        texts, _ = await drain(await call(s))
        assert texts and s.hits == 3


async def test_flaky_is_seeded() -> None:
    """Two servers with the same seed fail on the same requests; roughly at the rate asked."""

    async def outcomes(seed: int) -> list[bool]:
        async with serve(f"flaky=0.5,seed={seed}") as s:
            out = []
            for _ in range(16):
                try:
                    await call(s, stream=False)
                    out.append(True)
                except litellm.ServiceUnavailableError:
                    out.append(False)
            return out

    first, second = await outcomes(3), await outcomes(3)
    assert first == second
    assert 2 <= first.count(False) <= 14


async def test_tool_call_stream_and_round_trip() -> None:
    """With tool_call, the backend streams a call to the first tool; a tool result gets text."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    async with serve("tool_call") as s:
        name, args, finish = "", "", None
        async for chunk in await call(s, tools=tools):
            if not chunk.choices:
                continue
            for tc in chunk.choices[0].delta.tool_calls or []:
                name += tc.function.name or ""
                args += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert (name, args, finish) == ("get_weather", '{"city": "Paris"}', "tool_calls")
        history = [
            *MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_sim_1",
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_sim_1", "content": "sunny"},
        ]
        texts, _ = await drain(await call(s, tools=tools, messages=history))
        assert texts


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ok", Behavior()),
        ("", Behavior()),
        ("status=429,retry_after=2.5", Behavior(status=429, retry_after=2.5)),
        ("flaky=0.25, seed=9", Behavior(flaky=0.25, seed=9)),
        ("malformed,no-usage", Behavior(malformed=True, no_usage=True)),
    ],
)
def test_behavior_parse(spec: str, expected: Behavior) -> None:
    """Behaviour specs parse to the dataclass."""
    assert Behavior.parse(spec) == expected


@pytest.mark.parametrize("spec", ["explode", "status=abc", "chunks", "malformed=maybe"])
def test_behavior_parse_errors(spec: str) -> None:
    """Bad behaviour specs say what is wrong."""
    with pytest.raises(ValueError, match="sim behaviour"):
        Behavior.parse(spec)


def test_sim_command_serves() -> None:
    """`lbprovider sim` prints its URL and answers on 127.0.0.1 until --for ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbprovider.cli", "sim", "--for", "20", "--behavior", "text=pong"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split()[3]
        assert url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(
            f"{url}/chat/completions",
            method="POST",
            data=b'{"model": "m", "messages": [{"role": "user", "content": "ping"}]}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert b'"content": "pong"' in resp.read()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_stats_endpoint() -> None:
    """GET /sim/stats reports the counters to another process."""
    async with serve() as s:
        await call(s, stream=False)

        def fetch() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{s.port}/sim/stats", timeout=5) as r:
                return bytes(r.read())

        assert json.loads(await asyncio.to_thread(fetch)) == {
            "hits": 1,
            "completed": 1,
            "disconnects": 0,
            "limited": 0,
            "prompt_tokens": 12,
            "cached_tokens": 0,
        }
