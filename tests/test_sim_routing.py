"""The sim's routing behaviours over HTTP: its prompt cache and its RPM/TPM limits with headers."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from lbprovider import sim
from lbprovider.headroom import parse_duration
from lbprovider.sim import Behavior, SimServer, go_duration, serve
from lbprovider.testing import FakeClock

SYSTEM = ("You are a careful assistant who answers briefly. " * 200)[:8000]  # 2000 tokens
KEY = "sk-sim-test-key-000000"
FORMS = ["openai", "anthropic"]


def tokens(*texts: str) -> int:
    """The sim's estimate: 4 characters a token over the texts."""
    return math.ceil(sum(len(t) for t in texts) / 4)


def conversation(*turns: str, system: str = SYSTEM) -> list[dict[str, str]]:
    """User turns with the sim's answer between them (what a client resends)."""
    out: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        if i:
            out.append({"role": "assistant", "content": Behavior().text})
        out.append({"role": "user", "content": turn})
    return out


async def ask(
    server: SimServer, form: str, messages: list[dict[str, str]], *, system: str = SYSTEM
) -> tuple[int, int, int]:
    """One request through the official SDK: (prompt tokens, cache read, cache write)."""
    if form == "openai":
        client = openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0)
        async with client:
            full = [{"role": "system", "content": system}, *messages] if system else messages
            done = await client.chat.completions.create(
                model="sim-model",
                messages=full,  # type: ignore[arg-type]
            )
        assert done.usage is not None and done.usage.prompt_tokens_details is not None
        return done.usage.prompt_tokens, done.usage.prompt_tokens_details.cached_tokens or 0, 0
    sdk = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{server.port}", api_key=KEY, max_retries=0
    )
    async with sdk:
        extra: dict[str, Any] = {"system": system} if system else {}
        message = await sdk.messages.create(
            model="sim-model",
            max_tokens=64,
            messages=messages,  # type: ignore[arg-type]
            **extra,
        )
    u = message.usage
    read, write = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    return u.input_tokens + read + write, read, write


@pytest.fixture
def clock() -> FakeClock:
    """The sims' injected clock."""
    return FakeClock()


@pytest.fixture
async def caching(clock: FakeClock) -> AsyncIterator[SimServer]:
    """A sim with a 300 s prompt cache on the fake clock."""
    async with serve("cache_ttl=300", clock=clock.now) as server:
        yield server


@pytest.mark.parametrize("form", FORMS)
async def test_second_turn_reads_the_first_from_cache(caching: SimServer, form: str) -> None:
    """The second turn of a conversation reports the first turn's prompt as cached."""
    first = await ask(caching, form, conversation("first question"))
    assert first[:2] == (tokens(SYSTEM, "first question"), 0)
    if form == "anthropic":  # the whole new prompt was written to the cache
        assert first[2] == first[0]
    second = await ask(caching, form, conversation("first question", "and then?"))
    total = tokens(SYSTEM, "first question", Behavior().text, "and then?")
    assert second[:2] == (total, tokens(SYSTEM, "first question"))
    if form == "anthropic":
        assert second[2] == total - second[1]
    assert caching.cached_tokens == second[1]
    assert caching.prompt_tokens == first[0] + second[0]


@pytest.mark.parametrize("form", FORMS)
async def test_short_prompt_is_never_cached(caching: SimServer, form: str) -> None:
    """A prompt under cache_min_tokens is not cached, however often it is sent."""
    for _ in range(2):
        prompt, read, write = await ask(caching, form, conversation("hi"), system="Be brief.")
        assert prompt == tokens("Be brief.", "hi")
        assert (read, write) == (0, 0)


@pytest.mark.parametrize(("later", "cached"), [(299.0, True), (301.0, False)])
@pytest.mark.parametrize("form", FORMS)
async def test_cache_lapses_after_its_ttl(
    caching: SimServer, clock: FakeClock, form: str, later: float, cached: bool
) -> None:
    """A prefix is cached within the TTL of its last use, not after."""
    await ask(caching, form, conversation("question"))
    clock.advance(later)
    _, read, _ = await ask(caching, form, conversation("question"))
    assert read == (tokens(SYSTEM, "question") if cached else 0)


@pytest.mark.parametrize("form", FORMS)
async def test_other_conversation_shares_only_the_system_prompt(
    caching: SimServer, form: str
) -> None:
    """Another conversation with the same system prompt reads only the system from cache."""
    await ask(caching, form, conversation("one conversation"))
    prompt, read, _ = await ask(caching, form, conversation("another one"))
    assert prompt == tokens(SYSTEM, "another one")
    assert read == tokens(SYSTEM)


async def test_cache_is_per_model(caching: SimServer) -> None:
    """The same prompt for another model is not a cache hit."""
    body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]}
    async with aiohttp.ClientSession() as http:
        for model, cached in [("a", 0), ("b", 0), ("a", tokens(SYSTEM, "q"))]:
            async with http.post(
                f"{caching.url}/chat/completions", json=body | {"model": model}
            ) as r:
                usage = (await r.json())["usage"]
            assert usage["prompt_tokens_details"]["cached_tokens"] == cached


async def test_without_cache_ttl_usage_is_unchanged() -> None:
    """With the cache off, prompt_tokens stays the fixed default and no cache details appear."""
    async with serve() as server, aiohttp.ClientSession() as http:
        body = {"model": "m", "messages": [{"role": "user", "content": SYSTEM}]}
        async with http.post(f"{server.url}/chat/completions", json=body) as r:
            usage = (await r.json())["usage"]
    assert usage == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


@pytest.mark.parametrize("form", FORMS)
async def test_first_content_comes_sooner_when_cached(
    clock: FakeClock, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """first_chunk_delay is paid in full uncached, cache_speedup times faster when cached."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(sim, "_sleep", record)
    spec = "cache_ttl=300,first_chunk_delay=2,cache_speedup=4"
    async with serve(spec, clock=clock.now) as server:
        await ask(server, form, conversation("q"))
        await ask(server, form, conversation("q", "next"))
    share = tokens(SYSTEM, "q") / tokens(SYSTEM, "q", Behavior().text, "next")
    assert waits[0] == pytest.approx(2.0)
    assert waits[1] == pytest.approx(2.0 * ((1 - share) + share / 4))


class _Any:
    """Equal to any string (for messages in error bodies)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)


ANY: Any = _Any()


# -- rate limits ------------------------------------------------------------------------------


async def post(
    http: aiohttp.ClientSession, server: SimServer, form: str, content: str = "hi"
) -> tuple[int, dict[str, str], Any]:
    """One plain request: (status, lower-cased headers, JSON body)."""
    path = "/chat/completions" if form == "openai" else "/messages"
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": content}]}
    async with http.post(server.url + path, json=body) as r:
        headers = {k.lower(): v for k, v in r.headers.items()}
        return r.status, headers, await r.json()


def requests_left(form: str, headers: dict[str, str]) -> int:
    """Remaining requests in the form's own header."""
    name = (
        "x-ratelimit-remaining-requests"
        if form == "openai"
        else ("anthropic-ratelimit-requests-remaining")
    )
    return int(headers[name])


GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?(s|ms))$")


def reset_in(form: str, headers: dict[str, str], kind: str, now: float) -> float:
    """Seconds until the stated reset, checking its format on the way."""
    if form == "openai":
        raw = headers[f"x-ratelimit-reset-{kind}"]
        assert GO_DURATION.match(raw), raw
        seconds = parse_duration(raw)
        assert seconds is not None
        return seconds
    raw = headers[f"anthropic-ratelimit-{kind}-reset"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw), raw
    return datetime.fromisoformat(raw).timestamp() - now


@pytest.mark.parametrize("form", FORMS)
async def test_rpm_limit_counts_down_refuses_and_resets(clock: FakeClock, form: str) -> None:
    """Under rpm_limit=20 the headers count down, the 21st request in a minute is a 429."""
    async with serve("rpm_limit=20", clock=clock.now) as server, aiohttp.ClientSession() as http:
        start = clock.now()
        for i in range(20):
            status, headers, _ = await post(http, server, form)
            assert status == 200
            assert requests_left(form, headers) == 19 - i
            assert reset_in(form, headers, "requests", clock.now()) == pytest.approx(60, abs=1)
            clock.advance(1)
        status, headers, body = await post(http, server, form)
        assert status == 429
        # The first request (at start) leaves the window 60 s after it: 40 s from now.
        assert headers["retry-after"] == "40"
        assert requests_left(form, headers) == 0
        if form == "openai":
            assert body["error"]["code"] == "rate_limit_exceeded"
            assert headers["x-ratelimit-limit-requests"] == "20"
        else:
            assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": ANY}}
            assert headers["anthropic-ratelimit-requests-limit"] == "20"
        assert server.limited == 1 and server.hits == 21
        clock.advance(40)  # now start + 60: the first request has left the window
        status, headers, _ = await post(http, server, form)
        assert status == 200 and requests_left(form, headers) == 0
        clock.advance(60)  # everything has left
        status, headers, _ = await post(http, server, form)
        assert status == 200 and requests_left(form, headers) == 19
        assert clock.now() - start == 120


@pytest.mark.parametrize("form", FORMS)
async def test_tpm_limit_counts_prompt_and_completion(clock: FakeClock, form: str) -> None:
    """tpm_limit counts estimated prompt + completion tokens, and refuses what would pass it."""
    content = "x" * 160  # 40 tokens; the answer is 5 chunks = 5 completion tokens
    async with serve("tpm_limit=100", clock=clock.now) as server, aiohttp.ClientSession() as http:
        left = []
        for _ in range(2):
            status, headers, _ = await post(http, server, form, content)
            assert status == 200
            key = (
                "x-ratelimit-remaining-tokens"
                if form == "openai"
                else ("anthropic-ratelimit-tokens-remaining")
            )
            left.append(int(headers[key]))
            assert reset_in(form, headers, "tokens", clock.now()) == pytest.approx(60, abs=1)
            clock.advance(1)
        assert left == [55, 10]
        if form == "anthropic":  # the same limit shown against each side alone
            assert headers["anthropic-ratelimit-input-tokens-remaining"] == "20"
            assert headers["anthropic-ratelimit-output-tokens-remaining"] == "90"
            assert "anthropic-ratelimit-requests-remaining" not in headers
        else:
            assert "x-ratelimit-remaining-requests" not in headers
        status, headers, _ = await post(http, server, form, content)
        assert status == 429
        assert headers["retry-after"] == "58"  # once the first request's 45 tokens leave
        assert server.limited == 1
        clock.advance(58)
        status, _, _ = await post(http, server, form, content)
        assert status == 200


@pytest.mark.parametrize("form", FORMS)
async def test_limited_server_sends_headers_on_errors_too(clock: FakeClock, form: str) -> None:
    """A limited server's error answers carry the rate-limit headers as well."""
    spec = "rpm_limit=5,status=503"
    async with serve(spec, clock=clock.now) as server, aiohttp.ClientSession() as http:
        status, headers, _ = await post(http, server, form)
    assert status == 503
    assert requests_left(form, headers) == 4


@pytest.mark.parametrize("form", FORMS)
async def test_unlimited_server_sends_no_rate_limit_headers(form: str) -> None:
    """Without rpm_limit / tpm_limit no rate-limit header is sent."""
    async with serve() as server, aiohttp.ClientSession() as http:
        _, headers, _ = await post(http, server, form)
    assert not [h for h in headers if "ratelimit" in h]


@pytest.mark.parametrize("stream", [True, False])
async def test_streamed_answers_carry_the_headers(clock: FakeClock, stream: bool) -> None:
    """Streamed and whole answers both carry the headers (sent before the first event)."""
    async with serve("rpm_limit=3", clock=clock.now) as server, aiohttp.ClientSession() as http:
        body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{server.url}/chat/completions", json=body) as r:
            await r.read()
            assert r.headers["x-ratelimit-remaining-requests"] == "2"


def test_behaviours_parse_from_the_command_line_form() -> None:
    """The new behaviours parse from key=value text and print back."""
    b = Behavior.parse("cache_ttl=300,cache_min_tokens=512,rpm_limit=20,tpm_limit=40000")
    assert (b.cache_ttl, b.cache_min_tokens, b.rpm_limit, b.tpm_limit) == (300, 512, 20, 40000)
    assert Behavior.parse(str(b)) == b


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.02, "20ms"), (1, "1s"), (59.5, "59.5s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_go_duration_format(seconds: float, text: str) -> None:
    """Durations are written as OpenAI's headers write them."""
    assert go_duration(seconds) == text
