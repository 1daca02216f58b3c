"""Transports (SPEC §4.1): how the engine reaches one member, and what comes back.

A transport streams one answer from one member as :class:`Chunk` objects and raises
only :class:`~lbprovider.errors.TransportError` (status, ``Retry-After``, the
provider's error code, network and timeout flags, a message with secrets removed):
it translates its own client library's failures at its boundary, so the routing
rules never meet litellm's, aiohttp's or an SDK's classes.

- ``native`` (:mod:`lbprovider.transport.native`): OpenAI-compatible HTTP + SSE over
  aiohttp, one connection pool per event loop; no litellm, no SDK.
- ``native`` for provider ``anthropic`` (:mod:`lbprovider.transport.anthropic`): the
  Messages API over the same pool (SPEC §4.2).
- ``litellm`` (:mod:`lbprovider.transport.litellm`): ``litellm.acompletion``, imported
  and warmed up on first use.

:class:`TransportSet` picks a member's transport by its ``transport`` setting and
provider and builds each on first use, so a process whose members are all native never
imports litellm.  Tests inject one transport for every member
(:class:`lbprovider.testing.ScriptedTransport`).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from lbprovider.config import Member, TransportKind
from lbprovider.errors import ConfigError
from lbprovider.redaction import is_secret_name

__all__ = [
    "NATIVE_APIS",
    "RESERVED_KWARGS",
    "Api",
    "Chunk",
    "ToolCallDelta",
    "Transport",
    "TransportSet",
    "Usage",
    "Wire",
    "call_params",
    "host_port",
    "member_api",
    "member_secrets",
    "parse_retry_after",
]

# Caller keyword arguments that would override what the member decides, or our own
# retry/stream handling: dropped so that a key never leaks from caller to member.
RESERVED_KWARGS = frozenset(
    {
        "model",
        "messages",
        "api_key",
        "api_base",
        "base_url",
        "stream",
        "stream_options",
        "max_retries",
        "num_retries",
        "custom_llm_provider",
        "mock_response",
        "fallbacks",
        "affinity_key",  # the engine's own: which conversation (SPEC §3.5), not a backend's
    }
)
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one answer.

    ``prompt_tokens`` counts every input token, cached ones included (OpenAI's
    convention); ``cache_read_tokens`` of them were read from the provider's prompt
    cache (OpenAI ``prompt_tokens_details.cached_tokens``, Anthropic
    ``cache_read_input_tokens``) and ``cache_write_tokens`` written to it (Anthropic
    ``cache_creation_input_tokens``).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """prompt + completion."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        """What two members were billed for together (an answer continued elsewhere)."""
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's usage object (with ``prompt_tokens_details`` when tokens were cached)."""
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return out


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call (OpenAI delta format)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed piece of an answer. ``backend`` names the member that served it.

    ``thinking`` is reasoning text (Anthropic ``thinking_delta``) and ``signature`` the
    signature that closes a thinking block (``signature_delta``); both count as content:
    a member that is thinking has started its answer.  ``malformed`` counts the events
    the transport skipped just before this chunk because they could not be read (SPEC
    §3.4); the engine adds them to the member's ``malformedChunks``.  ``wire`` holds the
    member's own events (decoded JSON objects, in order) that made this chunk, when the
    request was passed through in the member's own API (:class:`Wire`): a gateway that
    speaks that API sends them back as they came.
    """

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    backend: str | None = None
    model: str | None = None
    malformed: int = 0
    thinking: str = ""
    signature: str = ""
    wire: tuple[dict[str, Any], ...] = ()
    # The answer's rate-limit headers (SPEC §3.6), on its first chunk: the engine keeps
    # what they say per member and routes around a member with no headroom left.
    limits: Mapping[str, str] | None = None

    @property
    def is_content(self) -> bool:
        """Text, thinking or a tool-call delta (a role-only chunk is not content)."""
        return bool(self.text or self.tool_calls or self.thinking or self.signature)


class Api(StrEnum):
    """The wire API a request arrived in, or a member speaks natively."""

    OPENAI_CHAT = "openai-chat"  # POST /v1/chat/completions
    ANTHROPIC_MESSAGES = "anthropic-messages"  # POST /v1/messages


@dataclass(frozen=True, slots=True)
class Wire:
    """A request as its client sent it (SPEC §4.2 pass-through).

    A transport whose member speaks ``api`` sends ``body`` as it is — only ``model`` and
    an output cap above the member's change — with ``headers`` (the client's
    ``anthropic-beta`` / ``anthropic-version``, say), and hands back the member's events
    in :attr:`Chunk.wire`.  A member that speaks another API gets the engine's
    translated request instead (``messages`` and ``params``), which the gateway always
    supplies too.
    """

    api: Api
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class Transport(Protocol):
    """How the engine reaches one member."""

    async def warm_up(self) -> None:
        """One-time set-up that must not count against the first-chunk timeout."""
        ...

    def stream(
        self,
        member: Member,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        wire: Wire | None = None,
    ) -> AsyncIterator[Chunk]:
        """Stream one answer from ``member``; closing the iterator closes the upstream.

        Yields only chunks that carry something (text, thinking, tool-call deltas, a
        finish reason, usage), so the first one is what the first-chunk timeout waits
        for.  ``wire``: the client's own request, sent as it is when ``member`` speaks
        its API (pass-through), ignored otherwise.  Raises
        :class:`~lbprovider.errors.TransportError` and nothing else (but cancellation).
        """
        ...


def call_params(member: Member, params: Mapping[str, Any]) -> dict[str, Any]:
    """The request parameters for ``member``: its ``modelParams`` (the load balancer's
    merged on top), then the caller's keyword arguments except reserved ones, with
    ``max_tokens`` / ``max_completion_tokens`` lowered to ``max-output-tokens``."""
    out: dict[str, Any] = {**member.model_params}
    out.update({k: v for k, v in params.items() if k not in RESERVED_KWARGS})
    cap = member.max_output_tokens
    if cap is not None:
        for key in _OUTPUT_CAPS:
            value = out.get(key)
            if isinstance(value, int) and value > cap:
                out[key] = cap
    return out


def member_secrets(member: Member) -> tuple[str, ...]:
    """The secret values a message about ``member`` must never show: its key, secret
    headers in its ``extra_headers``, credentials in its base URL (SPEC §2.1)."""
    found: list[str] = []
    if member.api_key is not None:
        found.append(member.api_key.get_secret_value())
    headers = member.model_params.get("extra_headers")
    if isinstance(headers, Mapping):
        found += [str(v) for k, v in headers.items() if is_secret_name(str(k)) and v]
    if member.api_base:
        try:
            parts = urlsplit(member.api_base)
        except ValueError:
            parts = None
        if parts is not None:
            found += [p for p in (parts.username, parts.password) if p]
            found += [v for k, v in parse_qsl(parts.query) if is_secret_name(k) and v]
    # The longest first, so that a secret containing another is removed whole.
    return tuple(sorted(set(found), key=len, reverse=True))


def parse_retry_after(headers: Mapping[str, Any] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` in seconds or as an
    HTTP date (relative to ``now``, epoch seconds; default the wall clock)."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in headers.items()}
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except (TypeError, ValueError):
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def host_port(url: str | None, default: str = "the backend") -> str:
    """``host:port`` of a URL, for messages (never its user info, path or query)."""
    if not url:
        return default
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return default
    return f"{parts.hostname}:{port}" if parts.hostname else default


def member_api(member: Member) -> Api | None:
    """The wire API ``member`` speaks natively (a request in that form passes through
    to it, SPEC §4.2), or None for a member called through litellm."""
    if member.transport is not TransportKind.NATIVE:
        return None
    return NATIVE_APIS.get(member.provider.lower())


# The providers the native transport speaks, by the API each one's members speak.
NATIVE_APIS: dict[str, Api] = {"openai": Api.OPENAI_CHAT, "anthropic": Api.ANTHROPIC_MESSAGES}


def _native() -> Transport:
    from lbprovider.transport.native import NativeTransport

    return NativeTransport()


def _anthropic() -> Transport:
    from lbprovider.transport.anthropic import AnthropicTransport

    return AnthropicTransport()


def _litellm() -> Transport:
    from lbprovider.transport.litellm import LiteLLMTransport

    return LiteLLMTransport()


_FACTORIES: dict[Api | None, Callable[[], Transport]] = {
    Api.OPENAI_CHAT: _native,
    Api.ANTHROPIC_MESSAGES: _anthropic,
    None: _litellm,
}


class TransportSet:
    """Which transport calls which member: one of each kind, built on first use.

    A native member speaks its provider's API (:func:`member_api`); profile validation
    refuses a native member of a provider the native transport does not speak.
    ``only`` replaces every kind with one transport (tests, benchmarks).
    """

    def __init__(self, only: Transport | None = None) -> None:
        self._only = only
        self._built: dict[Api | None, Transport] = {}

    def check(self, members: Iterable[Member]) -> None:
        """Raise :class:`~lbprovider.errors.ConfigError` naming the first member whose
        transport is not installed (litellm is an extra), before any request starts."""
        if self._only is None:
            for member in members:
                if member.transport is TransportKind.LITELLM:
                    from lbprovider.transport.litellm import require_litellm

                    require_litellm(member)

    def for_member(self, member: Member) -> Transport:
        """The transport that calls ``member``."""
        if self._only is not None:
            return self._only
        api = member_api(member)
        if api is None and member.transport is TransportKind.NATIVE:
            raise ConfigError(
                f"member {member.name!r}: the native transport does not speak "
                f"provider {member.provider!r}",
                file=member.file,
                field="ephemeralSettings.transport",
                hint='use "transport": "litellm" for this provider',
            )
        transport = self._built.get(api)
        if transport is None:
            transport = self._built[api] = _FACTORIES[api]()
        return transport
