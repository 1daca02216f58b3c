"""Rate-limit headroom (SPEC §3.6): what a provider's answer says is left of its limit.

Pure functions, no I/O: the transports hand over an answer's headers, the engine keeps
the :class:`RateLimit` per member in the state store (:meth:`RateLimit.to_dict`) and asks
:func:`skip` before choosing a member.

Two header dialects are read:

- OpenAI, Groq, OpenRouter: ``x-ratelimit-remaining-requests``,
  ``x-ratelimit-remaining-tokens`` and ``x-ratelimit-reset-requests`` /
  ``x-ratelimit-reset-tokens`` — *durations* from now, Go style (``1s``, ``6m0s``,
  ``59.5s``, ``20ms``, ``1h2m3s``) or plain seconds.
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset}``
  with resets as RFC 3339 *times*; for tokens the smallest remaining of the three
  token limits counts, with its own reset.

A value is only meaningful until its reset: past it, the limit has been replenished and
the value lapses (ignored, then dropped).  A value that comes without a usable reset is
given one of :data:`DEFAULT_LIFETIME` seconds, the usual per-minute window, so that a
member is never skipped forever on a number no later answer can refresh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "DEFAULT_LIFETIME",
    "RateLimit",
    "limit_headers",
    "merge",
    "parse_duration",
    "parse_rate_limit",
    "skip",
    "to_report",
]

DEFAULT_LIFETIME = 60.0  # seconds a value without a reset is believed

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_ANTHROPIC_TOKENS = ("tokens", "input-tokens", "output-tokens")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The last known headroom of one member; resets are epoch seconds.

    ``None`` means unknown (the provider did not say, or the value lapsed).
    """

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    requests_reset_at: float | None = None
    tokens_reset_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, camelCase (the state store's form)."""
        return {
            "remainingRequests": self.remaining_requests,
            "remainingTokens": self.remaining_tokens,
            "requestsResetAt": self.requests_reset_at,
            "tokensResetAt": self.tokens_reset_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateLimit:
        """The inverse of :meth:`to_dict` (missing or null keys are unknown)."""

        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        def count(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        return cls(
            remaining_requests=count("remainingRequests"),
            remaining_tokens=count("remainingTokens"),
            requests_reset_at=number("requestsResetAt"),
            tokens_reset_at=number("tokensResetAt"),
        )

    @property
    def empty(self) -> bool:
        """Nothing is known."""
        return self.remaining_requests is None and self.remaining_tokens is None


def parse_duration(text: str) -> float | None:
    """Seconds of a Go-style duration (``6m0s``, ``59.5s``, ``20ms``) or plain seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    total, pos = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _parse_time(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 time; ``None`` when it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:  # RFC 3339 always has an offset; a bare time is not one
        return None
    return moment.timestamp()


def _count(text: str | None) -> int | None:
    """A non-negative remaining count (Azure sends ``-1`` for "unknown")."""
    if text is None:
        return None
    try:
        value = int(float(text.strip()))
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_rate_limit(headers: Mapping[str, str], now: float) -> RateLimit | None:
    """The headroom an answer's headers state, or ``None`` when they state none.

    ``headers`` may be any mapping (names are matched without case); ``now`` turns the
    OpenAI dialect's durations into times.
    """
    h = {str(k).lower(): str(v) for k, v in headers.items()}

    def openai(kind: str) -> tuple[int | None, float | None]:
        remaining = _count(h.get(f"x-ratelimit-remaining-{kind}"))
        if remaining is None:
            return None, None
        raw = h.get(f"x-ratelimit-reset-{kind}")
        delay = parse_duration(raw) if raw is not None else None
        return remaining, now + (DEFAULT_LIFETIME if delay is None else delay)

    def anthropic(kind: str) -> tuple[int | None, float | None]:
        remaining = _count(h.get(f"anthropic-ratelimit-{kind}-remaining"))
        if remaining is None:
            return None, None
        raw = h.get(f"anthropic-ratelimit-{kind}-reset")
        at = _parse_time(raw) if raw is not None else None
        return remaining, (now + DEFAULT_LIFETIME) if at is None else at

    requests, requests_at = openai("requests")
    if requests is None:
        requests, requests_at = anthropic("requests")
    tokens, tokens_at = openai("tokens")
    if tokens is None:
        known = [pair for kind in _ANTHROPIC_TOKENS if (pair := anthropic(kind))[0] is not None]
        if known:
            tokens, tokens_at = min(known, key=lambda pair: pair[0] or 0)
    if requests is None and tokens is None:
        return None
    return RateLimit(requests, tokens, requests_at, tokens_at)


def _live(rec: RateLimit | None, now: float) -> RateLimit | None:
    """``rec`` without the values past their reset (``None`` when nothing is left)."""
    if rec is None:
        return None
    requests_live = rec.requests_reset_at is None or now < rec.requests_reset_at
    tokens_live = rec.tokens_reset_at is None or now < rec.tokens_reset_at
    out = RateLimit(
        rec.remaining_requests if requests_live else None,
        rec.remaining_tokens if tokens_live else None,
        rec.requests_reset_at if requests_live and rec.remaining_requests is not None else None,
        rec.tokens_reset_at if tokens_live and rec.remaining_tokens is not None else None,
    )
    return None if out.empty else out


def merge(old: RateLimit | None, new: RateLimit | None, now: float) -> RateLimit | None:
    """What to keep after an answer: its values, else the old ones still before their reset.

    An answer without rate-limit headers (``new`` is ``None``), or one that states only
    requests or only tokens, leaves the other values as they were; they lapse at their
    reset.
    """
    old = _live(old, now)
    new = _live(new, now)
    if new is None or old is None:
        return new or old
    requests = new if new.remaining_requests is not None else old
    tokens = new if new.remaining_tokens is not None else old
    return RateLimit(
        requests.remaining_requests,
        tokens.remaining_tokens,
        requests.requests_reset_at,
        tokens.tokens_reset_at,
    )


def skip(rec: RateLimit | None, now: float, prompt_tokens: int) -> bool:
    """Whether headroom says not to send this request to the member now (SPEC §3.6).

    Yes when it has no requests left, or fewer tokens left than the request's estimated
    prompt tokens, and that value's reset has not come yet.
    """
    live = _live(rec, now)
    if live is None:
        return False
    if live.remaining_requests == 0:
        return True
    return live.remaining_tokens is not None and live.remaining_tokens < prompt_tokens


def to_report(rec: RateLimit | None, now: float) -> dict[str, Any] | None:
    """``{remainingRequests, remainingTokens, resetAt}`` for ``stats`` (resetAt: epoch ms).

    ``resetAt`` is the earliest reset still to come; ``None`` when nothing is known.
    """
    live = _live(rec, now)
    if live is None:
        return None
    resets = [t for t in (live.requests_reset_at, live.tokens_reset_at) if t is not None]
    return {
        "remainingRequests": live.remaining_requests,
        "remainingTokens": live.remaining_tokens,
        "resetAt": round(min(resets) * 1000) if resets else None,
    }


_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def limit_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """An answer's rate-limit headers (both dialects), names lowercased; None without
    any.  Transports hand these to the engine, which reads them on its own clock."""
    found = {k.lower(): v for k, v in headers.items() if k.lower().startswith(_PREFIXES)}
    return found or None
