"""lbprovider.headroom: both header dialects, their reset formats, merging, skipping, reporting."""

from __future__ import annotations

import json
from datetime import datetime

import aiohttp
import pytest
from multidict import CIMultiDict

from lbprovider.headroom import (
    DEFAULT_LIFETIME,
    RateLimit,
    merge,
    parse_duration,
    parse_rate_limit,
    skip,
    to_report,
)
from lbprovider.sim import serve
from lbprovider.testing import FakeClock

NOW = 1_800_000_000.0
AT = "2027-01-15T08:00:00Z"
AT_EPOCH = datetime.fromisoformat(AT).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("59.5s", 59.5),
        ("20ms", 0.02),
        ("1h2m3s", 3723.0),
        ("1m30.5s", 90.5),
        ("250us", 0.00025),
        ("12", 12.0),
        ("0.5", 0.5),
        ("0", 0.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    """Go-style durations and plain seconds parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "-1", "s", "1s2", "nan", "inf"])
def test_bad_durations(text: str) -> None:
    """Anything else is no duration."""
    assert parse_duration(text) is None


def test_openai_headers() -> None:
    """The OpenAI dialect: remaining counts, resets as durations from now."""
    headers = {
        "X-RateLimit-Limit-Requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_rate_limit(headers, NOW) == RateLimit(59, 149984, NOW + 1, NOW + 360)


@pytest.mark.parametrize(
    "reset",
    [AT, "2027-01-15T08:00:00.000Z", "2027-01-15T09:00:00+01:00", "2027-01-15T08:00:00+00:00"],
)
def test_anthropic_reset_formats(reset: str) -> None:
    """The Anthropic dialect: resets as RFC 3339 times, in any offset."""
    headers = {
        "anthropic-ratelimit-requests-remaining": "3",
        "anthropic-ratelimit-requests-reset": reset,
    }
    assert parse_rate_limit(headers, NOW) == RateLimit(3, None, AT_EPOCH, None)


def test_anthropic_tokens_take_the_smallest_with_its_reset() -> None:
    """Of tokens, input-tokens and output-tokens, the smallest remaining counts, with its reset."""
    headers = {
        "anthropic-ratelimit-tokens-remaining": "9000",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:30Z",
        "anthropic-ratelimit-input-tokens-remaining": "4000",
        "anthropic-ratelimit-input-tokens-reset": AT,
        "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": "2027-01-15T08:00:10Z",
    }
    assert parse_rate_limit(headers, NOW) == RateLimit(None, 4000, None, AT_EPOCH)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-requests": "5"},
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "soon"},
        {"anthropic-ratelimit-requests-remaining": "5"},
        {"anthropic-ratelimit-requests-remaining": "5", "anthropic-ratelimit-requests-reset": "x"},
        {
            "anthropic-ratelimit-requests-remaining": "5",
            "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:00",
        },
    ],
)
def test_value_without_usable_reset_gets_the_default_lifetime(headers: dict[str, str]) -> None:
    """A remaining count with no (or no readable) reset is believed for DEFAULT_LIFETIME."""
    assert parse_rate_limit(headers, NOW) == RateLimit(5, None, NOW + DEFAULT_LIFETIME, None)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/json", "retry-after": "3"},
        {"x-ratelimit-limit-requests": "60"},
        {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-remaining-tokens": "-1"},
        {"anthropic-ratelimit-tokens-remaining": "many"},
    ],
)
def test_no_headroom_stated(headers: dict[str, str]) -> None:
    """Without a usable remaining count (Azure's -1 means unknown) there is no record."""
    assert parse_rate_limit(headers, NOW) is None


def test_case_insensitive_multidict() -> None:
    """aiohttp's and httpx's header mappings are read as they come."""
    headers = CIMultiDict(
        {"X-RateLimit-Remaining-Tokens": "10", "X-RateLimit-Reset-Tokens": "20ms"}
    )
    assert parse_rate_limit(headers, NOW) == RateLimit(None, 10, None, NOW + 0.02)


def test_dict_round_trip() -> None:
    """to_dict is JSON-able and camelCase; from_dict reads it back, missing keys unknown."""
    rec = RateLimit(0, 250, NOW + 1.5, NOW + 60)
    data = json.loads(json.dumps(rec.to_dict()))
    assert data == {
        "remainingRequests": 0,
        "remainingTokens": 250,
        "requestsResetAt": NOW + 1.5,
        "tokensResetAt": NOW + 60,
    }
    assert RateLimit.from_dict(data) == rec
    assert RateLimit.from_dict({"remainingTokens": 7}) == RateLimit(remaining_tokens=7)


OLD = RateLimit(10, 5000, NOW + 30, NOW + 60)


@pytest.mark.parametrize(
    ("old", "new", "now", "merged"),
    [
        (None, None, NOW, None),
        (OLD, None, NOW, OLD),  # an answer without headers leaves the old values
        (None, OLD, NOW, OLD),
        (OLD, RateLimit(9, 4000, NOW + 29, NOW + 59), NOW, RateLimit(9, 4000, NOW + 29, NOW + 59)),
        # only requests stated: the old tokens stay
        (OLD, RateLimit(9, None, NOW + 29, None), NOW, RateLimit(9, 5000, NOW + 29, NOW + 60)),
        # the old requests lapsed at NOW + 30: only the tokens are left
        (OLD, None, NOW + 30, RateLimit(None, 5000, None, NOW + 60)),
        (OLD, None, NOW + 60, None),
        (OLD, RateLimit(None, 100, None, NOW + 90), NOW + 45, RateLimit(None, 100, None, NOW + 90)),
    ],
)
def test_merge(
    old: RateLimit | None, new: RateLimit | None, now: float, merged: RateLimit | None
) -> None:
    """New values replace old ones field by field; old ones lapse at their reset."""
    assert merge(old, new, now) == merged


@pytest.mark.parametrize(
    ("rec", "now", "prompt", "skipped"),
    [
        (None, NOW, 100, False),
        (RateLimit(0, None, NOW + 5, None), NOW, 1, True),  # no requests left
        (RateLimit(0, None, NOW + 5, None), NOW + 5, 1, False),  # ...until its reset
        (RateLimit(1, None, NOW + 5, None), NOW, 1, False),
        (RateLimit(None, 99, None, NOW + 5), NOW, 100, True),  # fewer tokens than the prompt
        (RateLimit(None, 100, None, NOW + 5), NOW, 100, False),
        (RateLimit(None, 99, None, NOW + 5), NOW + 6, 100, False),  # past its reset
        (RateLimit(0, 10_000, NOW - 1, NOW + 5), NOW, 100, False),  # requests lapsed
        (RateLimit(5, 10, NOW + 5, NOW - 1), NOW, 100, False),  # tokens lapsed
        (RateLimit(0, None, None, None), NOW, 1, True),  # no reset known: still in force
    ],
)
def test_skip(rec: RateLimit | None, now: float, prompt: int, skipped: bool) -> None:
    """SPEC §3.6: no requests left, or fewer tokens than the prompt, before the reset."""
    assert skip(rec, now, prompt) is skipped


@pytest.mark.parametrize(
    ("rec", "now", "report"),
    [
        (None, NOW, None),
        (
            RateLimit(3, 900, NOW + 2, NOW + 1.5),
            NOW,
            {"remainingRequests": 3, "remainingTokens": 900, "resetAt": int((NOW + 1.5) * 1000)},
        ),
        (
            RateLimit(3, 900, NOW + 2, NOW + 1.5),
            NOW + 1.5,
            {"remainingRequests": 3, "remainingTokens": None, "resetAt": int((NOW + 2) * 1000)},
        ),
        (RateLimit(3, 900, NOW + 2, NOW + 1.5), NOW + 2, None),
        (RateLimit(3), NOW, {"remainingRequests": 3, "remainingTokens": None, "resetAt": None}),
    ],
)
def test_report(rec: RateLimit | None, now: float, report: dict[str, object] | None) -> None:
    """stats' rateLimit: the live values and the earliest reset still to come, in epoch ms."""
    assert to_report(rec, now) == report


@pytest.mark.parametrize("path", ["/chat/completions", "/messages"])
async def test_round_trip_with_the_sim(path: str) -> None:
    """The sim's headers of both forms parse back to its window, skip at 0 and lapse at reset."""
    clock = FakeClock()
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    spec = "rpm_limit=3,tpm_limit=1000"
    async with serve(spec, clock=clock.now) as server, aiohttp.ClientSession() as http:
        rec: RateLimit | None = None
        for left in (2, 1, 0):
            async with http.post(server.url + path, json=body) as r:
                assert r.status == 200
                rec = merge(rec, parse_rate_limit(r.headers, clock.now()), clock.now())
            assert rec is not None and rec.remaining_requests == left
        assert rec is not None
        # "hi" is 1 estimated prompt token, the answer 5: three requests used 18.
        assert rec.remaining_tokens == 1000 - 18
        assert rec.requests_reset_at == pytest.approx(clock.now() + 60, abs=1)
        assert skip(rec, clock.now(), 1)
        async with http.post(server.url + path, json=body) as r:
            assert r.status == 429  # what the skip saved
            limited = parse_rate_limit(r.headers, clock.now())
            assert limited is not None and limited.remaining_requests == 0
        clock.advance(60)
        assert not skip(rec, clock.now(), 1)
        assert to_report(rec, clock.now()) is None
        async with http.post(server.url + path, json=body) as r:
            assert r.status == 200
            fresh = parse_rate_limit(r.headers, clock.now())
        assert fresh is not None and fresh.remaining_requests == 2
