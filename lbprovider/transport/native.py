"""The ``native`` transport: OpenAI-compatible chat completions over HTTP + SSE (SPEC §4.1).

``POST {base-url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``, through aiohttp (chosen over httpx + httpx-sse by
measurement: about half the CPU per streamed chunk, docs/design.md), with the member's
key as a bearer header.  No litellm and no SDK on this path: a CLI call costs what
Python, aiohttp and our code cost.

The SSE stream is read line by line and each ``data:`` event decoded with
``json.loads``.  An event that is not valid JSON is skipped and counted (the count
rides on the next chunk, :attr:`Chunk.malformed`); ``data: [DONE]`` ends the answer,
and so does the end of the body after a ``finish_reason``; a body that ends with
neither, or a connection that drops, is a network error.  A backend that answers a
streaming request with one JSON object (it ignored ``stream``) is read as one chunk.
A 200 that holds no answer — another content type (an HTML captive portal, a wrong
base URL), a stream without one readable event, a JSON body that is not a chat
completion — is a failure with no status, never an empty success.

Every failure leaves as :class:`~lbprovider.errors.TransportError`: an HTTP error
status with its ``Retry-After`` and the provider's error code, a refused or broken
connection naming host and port, all with the member's key scrubbed out.

Connections are pooled: one ``aiohttp.ClientSession`` per event loop, shared by every
load balancer of the process, closed when that loop shuts down (``asyncio.run`` and
pytest's loops finalise async generators, which is the hook used) or by
:func:`close_pool`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from lbprovider.config import Member
from lbprovider.errors import TransportError
from lbprovider.headroom import limit_headers
from lbprovider.loops import PerLoop
from lbprovider.redaction import scrub
from lbprovider.transport import (
    Api,
    Chunk,
    ToolCallDelta,
    Usage,
    Wire,
    call_params,
    host_port,
    member_secrets,
    parse_retry_after,
)

__all__ = ["DEFAULT_BASE_URL", "NativeTransport", "close_pool", "network_error", "pool"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONNECT_TIMEOUT_S = 30.0
_ERROR_BODY_LIMIT = 64 * 1024
_LINE_LIMIT = 16 * 1024 * 1024
_USER_AGENT = "lbprovider"
# Parameters that shape the HTTP request itself, not the JSON body.
_CLIENT_PARAMS = frozenset({"extra_headers", "extra_body", "extra_query", "timeout"})


# -- the pool: one session per event loop --------------------------------------------------


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        # Honour HTTP(S)_PROXY / NO_PROXY as httpx-based clients (litellm) do.
        trust_env=True,
        headers={"User-Agent": _USER_AGENT},
    )


_POOLS: PerLoop[aiohttp.ClientSession] = PerLoop(
    _session, lambda session: session.close(), alive=lambda session: not session.closed
)


async def pool() -> aiohttp.ClientSession:
    """The running loop's connection pool, made on first use."""
    return await _POOLS.get()


async def close_pool() -> None:
    """Close the running loop's pool now (idempotent)."""
    await _POOLS.close()


# -- requests -------------------------------------------------------------------------------


def endpoint(member: Member) -> str:
    """``{base-url}/chat/completions`` (OpenAI's own API when no base URL is set); a
    query in the base URL (``?api-version=...``) stays a query."""
    parts = urlsplit(member.api_base or DEFAULT_BASE_URL)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))


def _bearer(member: Member) -> str | None:
    if member.api_key is not None:
        return member.api_key.get_secret_value()
    # SPEC §2.1: no key configured → the provider's own default variable.
    return os.environ.get("OPENAI_API_KEY") or None


def passes_through(wire: Wire | None) -> bool:
    """Whether ``wire`` is a Chat Completions request this transport sends as it is."""
    return wire is not None and wire.api is Api.OPENAI_CHAT


def build_request(
    member: Member,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    wire: Wire | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and the headers of one streamed chat-completion request.

    A client's own Chat Completions request (``wire``) goes out as it came, but for
    ``model``, an output cap above the member's, and ``stream`` with
    ``stream_options.include_usage``: the engine reads every answer as a stream and
    counts its tokens (the gateway gives a non-streaming client one whole answer).
    """
    if passes_through(wire):
        assert wire is not None
        client_body = {k: v for k, v in wire.body.items() if k not in ("model", "messages")}
        merged = call_params(member, client_body)
        merged.update({k: v for k, v in client_body.items() if k not in merged})
    else:
        merged = call_params(member, params)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    extra_headers = merged.get("extra_headers")
    if isinstance(extra_headers, Mapping):
        headers.update({str(k): str(v) for k, v in extra_headers.items()})
    key = _bearer(member)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {k: v for k, v in merged.items() if k not in _CLIENT_PARAMS}
    extra_body = merged.get("extra_body")
    if isinstance(extra_body, Mapping):
        body.update(extra_body)
    body.update(
        model=member.model,
        messages=list(messages),
        stream=True,
        stream_options={"include_usage": True},
    )
    return body, headers


# -- reading answers ------------------------------------------------------------------------


def _tool_calls(raw: Any) -> tuple[ToolCallDelta, ...]:
    calls = []
    for position, tc in enumerate(raw):
        if not isinstance(tc, dict):
            continue
        fn = tc.get("function") or {}
        index = tc.get("index")
        calls.append(
            ToolCallDelta(
                index=index if isinstance(index, int) else position,
                id=tc.get("id"),
                name=fn.get("name"),
                arguments=fn.get("arguments") or "",
            )
        )
    return tuple(calls)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cache_read_tokens=int(cached or 0),
    )


def to_chunk(event: dict[str, Any], member: Member, malformed: int = 0) -> Chunk | None:
    """One ``chat.completion.chunk`` event (or a whole ``chat.completion``) as a Chunk;
    None when it carries nothing (the role-only first event)."""
    text = ""
    tools: tuple[ToolCallDelta, ...] = ()
    finish = None
    choices = event.get("choices")
    if choices and isinstance(choices, list):
        choice = choices[0]
        delta = choice.get("delta") or choice.get("message") or {}
        content = delta.get("content")
        text = content if isinstance(content, str) else ""
        calls = delta.get("tool_calls")
        if calls:
            tools = _tool_calls(calls)
        finish = choice.get("finish_reason")
    usage = _usage(event.get("usage"))
    if not (text or tools or finish or usage or malformed):
        return None
    return Chunk(
        text=text,
        tool_calls=tools,
        finish_reason=finish,
        usage=usage,
        backend=member.name,
        model=member.litellm_model,
        malformed=malformed,
    )


def _error_fields(payload: Any) -> tuple[str | None, str | None, int | None]:
    """(message, code, numeric code) from an OpenAI-style error object, or None."""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, str):
        return error, None, None
    if not isinstance(error, dict):
        return None, None, None
    message = error.get("message")
    code = error.get("code")
    return (
        message if isinstance(message, str) else None,
        code if isinstance(code, str) and code else None,
        code if isinstance(code, int) else None,
    )


class NativeTransport:
    """Streams OpenAI-compatible chat completions over aiohttp; see the module docstring."""

    async def warm_up(self) -> None:
        """Nothing to warm: aiohttp is imported with this module, the pool on first use."""

    def stream(
        self,
        member: Member,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        wire: Wire | None = None,
    ) -> AsyncIterator[Chunk]:
        """Yield the member's answer as chunks; closing the iterator closes the connection."""
        keep = passes_through(wire)

        def prepare() -> tuple[str, dict[str, Any], dict[str, str]]:
            return endpoint(member), *build_request(member, messages, params, wire)

        def read(response: aiohttp.ClientResponse, url: str) -> AsyncIterator[Chunk]:
            if response.content_type == "application/json":
                return _whole(response, member, url, keep)
            if not _is_event_stream(response):
                raise no_answer(
                    f"{host_port(url)} answered {response.content_type}, not an event stream",
                    member,
                )
            return _events(response, member, keep=keep)

        return exchange(member, prepare, read, _http_error)


Prepare = Callable[[], tuple[str, Mapping[str, Any], Mapping[str, str]]]
Read = Callable[[aiohttp.ClientResponse, str], AsyncIterator[Chunk]]
ReadError = Callable[[aiohttp.ClientResponse, Member], Awaitable[TransportError]]


async def exchange(
    member: Member, prepare: Prepare, read: Read, http_error: ReadError
) -> AsyncIterator[Chunk]:
    """One streamed call, as both native transports make it: ``prepare`` gives the URL,
    the JSON body and the headers; a refused or broken connection is a network error
    naming host and port; an error status is ``http_error``'s; anything else is
    ``read``'s to turn into chunks.  The answer's rate-limit headers ride on its first
    chunk or on its error (SPEC §3.6).  Only a finished answer gives its connection back
    to the pool; anything else (an error, the caller or a timeout closing us) closes it,
    so the backend sees the disconnect."""
    url, body, headers = prepare()
    session = await pool()
    try:
        response = await session.post(
            url, data=json.dumps(body, ensure_ascii=False).encode(), headers=headers
        )
    except (aiohttp.ClientError, OSError) as exc:
        raise network_error(exc, member, url, connecting=True) from exc
    done = False
    limits = limit_headers(response.headers)
    try:
        if response.status >= 400:
            error = await http_error(response, member)
            error.limits = limits
            raise error
        async for chunk in read(response, url):
            if limits is not None:
                chunk, limits = replace(chunk, limits=limits), None
            yield chunk
        done = True
    except (aiohttp.ClientError, OSError) as exc:
        raise network_error(exc, member, url, connecting=False) from exc
    finally:
        if done:
            response.release()
        else:
            response.close()


async def _whole(
    response: aiohttp.ClientResponse, member: Member, url: str, keep: bool
) -> AsyncIterator[Chunk]:
    """A JSON answer to a streaming request (a server that ignored ``stream``): one chunk."""
    payload = await _json_body(response, member, url)
    chunk = to_chunk(payload, member)
    if chunk is None:
        raise no_answer(
            f"{host_port(url)} answered with a body that is not a chat completion", member
        )
    yield replace(chunk, wire=(payload,)) if keep else chunk


async def _events(
    response: aiohttp.ClientResponse, member: Member, *, keep: bool = False
) -> AsyncIterator[Chunk]:
    """The SSE events of a streamed answer, as chunks (see the module docstring).

    Each ``data:`` line is one event: OpenAI-compatible servers put every event on one
    line, and reading lines from whatever blocks arrive has no line-length limit.
    ``keep``: every event read rides on the next chunk (:attr:`Chunk.wire`), for a
    client that gets the member's own events back.
    """
    pending = b""
    kept: list[dict[str, Any]] = []
    malformed = 0
    finished = done = readable = False
    async for block in response.content.iter_any():
        lines = (pending + block).split(b"\n") if pending else block.split(b"\n")
        pending = lines.pop()
        if len(pending) > _LINE_LIMIT:
            raise TransportError(
                f"an event longer than {_LINE_LIMIT} bytes", member=member.name, network=True
            )
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, "event:", "id:", ": comments"
            payload = line[5:].strip()
            if payload == b"[DONE]":
                done = True
                break
            try:
                event = json.loads(payload)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                malformed += 1
                continue
            if event.get("error"):
                raise _stream_error(event, member)
            if keep:
                kept.append(event)
            chunk = to_chunk(event, member, malformed)
            if chunk is not None:
                malformed = 0
                readable = True
                finished = finished or chunk.finish_reason is not None
                if kept:
                    chunk, kept = replace(chunk, wire=tuple(kept)), []
                yield chunk
        if done:
            break
    if not readable:
        # A 200 that carried nothing we could read is not an (empty) answer: it fails
        # like an error with no status, so it is retried and then the next member serves.
        what = f"{malformed} events that are not JSON" if malformed else "no event"
        raise no_answer(f"no readable event in the answer ({what})", member)
    if not (done or finished):
        raise TransportError(
            "the stream ended before the answer finished (no finish_reason, no [DONE])",
            member=member.name,
            network=True,
        )
    if malformed or kept:
        yield Chunk(
            backend=member.name, model=member.litellm_model, malformed=malformed, wire=tuple(kept)
        )


async def _json_body(response: aiohttp.ClientResponse, member: Member, url: str) -> dict[str, Any]:
    raw = await response.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise no_answer(
            f"{host_port(url)} answered with a body that is not a chat completion", member
        )
    if payload.get("error"):
        raise _stream_error(payload, member)
    return payload


def _is_event_stream(response: aiohttp.ClientResponse) -> bool:
    # A missing Content-Type (aiohttp reports octet-stream) is read as a stream: some
    # OpenAI-compatible servers omit it; what they send decides (no event → a failure).
    return response.content_type == "text/event-stream" or "Content-Type" not in response.headers


def no_answer(reason: str, member: Member) -> TransportError:
    """A 200 that is not an answer: a failure with no status (SPEC §3.2: retried, then
    the next member), never an empty success."""
    return TransportError(reason, member=member.name)


async def _http_error(response: aiohttp.ClientResponse, member: Member) -> TransportError:
    raw = await response.content.read(_ERROR_BODY_LIMIT)
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw.decode("utf-8", "replace").strip()
    message, code, _ = _error_fields(payload)
    return TransportError(
        scrub(message or response.reason or f"HTTP {response.status}", member_secrets(member)),
        member=member.name,
        status=response.status,
        retry_after=parse_retry_after(response.headers),
        code=code,
    )


def _stream_error(event: Mapping[str, Any], member: Member) -> TransportError:
    """An error object inside a 200 stream (OpenRouter and others do this)."""
    message, code, number = _error_fields(event)
    return TransportError(
        scrub(message or "the backend reported an error in the stream", member_secrets(member)),
        member=member.name,
        status=number if number is not None and 400 <= number <= 599 else None,
        code=code,
    )


def network_error(
    exc: BaseException, member: Member, url: str, *, connecting: bool
) -> TransportError:
    if connecting:
        what = f"cannot connect to {host_port(url)}"
    else:
        what = f"the connection to {host_port(url)} broke"
    errno = exc.errno if isinstance(exc, OSError) else None
    detail = os.strerror(errno) if errno else (str(exc) or type(exc).__name__)
    return TransportError(
        scrub(f"{what}: {detail}", member_secrets(member)),
        member=member.name,
        network=True,
        timeout=isinstance(exc, TimeoutError),
    )
