"""The ``native`` transport for provider ``anthropic``: the Messages API (SPEC §4.2).

``POST {base-url}/v1/messages`` with ``stream: true`` over the same per-loop aiohttp
pool as :mod:`lbprovider.transport.native`, the key in ``x-api-key``.  No anthropic
SDK and no litellm on this path.

Requests in the engine's chat form (OpenAI Chat Completions messages and keyword
arguments) are translated by :func:`build_request`: system messages become
``system``, image parts image blocks, OpenAI tools and tool calls ``tool_use`` /
``tool_result`` blocks, ``stop`` ``stop_sequences``; what Anthropic has no use for is
dropped (one debug line names it).  A client's own Messages request (:class:`Wire`)
is sent as it came but for ``model``, an output cap above the member's and
``stream``, and every event read rides back on the chunks (:attr:`Chunk.wire`).

Events become the engine's chunks (:class:`_Answer`): text, thinking and its
signature, tool-call deltas (a ``tool_use`` block's ordinal among the tool blocks is
its index), and a final chunk with the finish reason and the usage, cache tokens
included.  ``message_start`` is held, not yielded: the first chunk is content, which
is what the first-chunk timeout waits for.  A stream that ends with neither
``message_stop`` nor a ``stop_reason`` is a network error (an interruption); an
``event: error`` is a :class:`TransportError` (``overloaded_error`` as 529).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from lbprovider.config import Member
from lbprovider.errors import TransportError
from lbprovider.redaction import is_secret_name, scrub
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
from lbprovider.transport.native import exchange, no_answer

__all__ = [
    "API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "AnthropicTransport",
    "build_request",
    "endpoint",
    "passes_through",
    "to_messages_body",
    "trimmed_prefill",
]

logger = logging.getLogger("lbprovider")

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_ERROR_BODY_LIMIT = 64 * 1024
_LINE_LIMIT = 16 * 1024 * 1024
# Shape the HTTP request, not the JSON body (as for the OpenAI-compatible transport).
_CLIENT_PARAMS = frozenset({"extra_headers", "extra_body", "extra_query", "timeout"})
# Messages API parameters that pass as they are.
_PASSED = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "thinking",
        "service_tier",
        "stop_sequences",
        "container",
        "mcp_servers",
        "context_management",
    }
)
# Chat Completions parameters translated below rather than passed or dropped.
_TRANSLATED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "system",
    }
)
# A client's headers that never reach a member: its credentials and the transport's own.
_NOT_FORWARDED = frozenset(
    {"host", "content-length", "content-type", "accept", "accept-encoding", "connection"}
)
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Stream error types that are an HTTP status when the API answers without streaming.
_STREAM_ERROR_STATUS = {"overloaded_error": 529, "api_error": 500}
_CONTEXT_WINDOW_PHRASES = ("prompt is too long", "exceed context limit")


# -- requests -------------------------------------------------------------------------------


def endpoint(member: Member) -> str:
    """The Messages URL (SPEC §2.1): a base URL ending in ``/v1/messages`` as it is, one
    ending in ``/v1`` plus ``/messages``, any other plus ``/v1/messages``; a query stays."""
    parts = urlsplit(member.api_base or DEFAULT_BASE_URL)
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/messages"):
        path += "/messages" if path.endswith("/v1") else "/v1/messages"
    return urlunsplit(parts._replace(path=path))


def _key(member: Member) -> str | None:
    if member.api_key is not None:
        return member.api_key.get_secret_value()
    # SPEC §2.1: no key configured → the provider's own default variable.
    return os.environ.get("ANTHROPIC_API_KEY") or None


def passes_through(wire: Wire | None) -> bool:
    """Whether ``wire`` is a Messages request this transport sends as it is."""
    return wire is not None and wire.api is Api.ANTHROPIC_MESSAGES


def _capped(member: Member, value: Any) -> int:
    """``max_tokens`` for the member: the request's lowered to the cap, or the default."""
    cap = member.max_output_tokens
    if isinstance(value, int) and not isinstance(value, bool):
        return min(value, cap) if cap is not None else value
    return cap if cap is not None else DEFAULT_MAX_TOKENS


def build_request(
    member: Member,
    messages: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    wire: Wire | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and the headers of one streamed Messages request."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "anthropic-version": API_VERSION,
    }
    if passes_through(wire):
        assert wire is not None
        body = dict(wire.body)
        body["max_tokens"] = _capped(member, body.get("max_tokens"))
        body.update(model=member.model, stream=True)
        headers.update(
            {
                str(k): str(v)
                for k, v in wire.headers.items()
                # A key never leaks from the caller into a member (SPEC §2.1).
                if str(k).lower() not in _NOT_FORWARDED and not is_secret_name(str(k))
            }
        )
        merged: Mapping[str, Any] = member.model_params
    else:
        merged = call_params(member, params)
        body = to_messages_body(member, messages, merged)
        extra_body = merged.get("extra_body")
        if isinstance(extra_body, Mapping):
            body.update(extra_body)
    extra_headers = merged.get("extra_headers")
    if isinstance(extra_headers, Mapping):
        headers.update({str(k): str(v) for k, v in extra_headers.items()})
    key = _key(member)
    if key:
        headers["x-api-key"] = key
    return body, headers


def to_messages_body(
    member: Member, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> dict[str, Any]:
    """A Messages request body from the engine's chat form (``params`` already merged
    and capped by :func:`~lbprovider.transport.call_params`)."""
    system, turns = _turns(messages)
    body: dict[str, Any] = {"model": member.model, "messages": turns}
    if system is None and params.get("system"):
        system = params["system"]
    if system:
        body["system"] = system
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        max_tokens = params.get("max_completion_tokens")
    body["max_tokens"] = _capped(member, max_tokens)
    body.update({k: v for k, v in params.items() if k in _PASSED})
    stop = params.get("stop")
    if stop and "stop_sequences" not in body:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = params.get("tools")
    if tools:
        body["tools"] = [_tool(t) for t in tools if isinstance(t, Mapping)]
    choice = _tool_choice(params.get("tool_choice"), params.get("parallel_tool_calls"))
    if choice is not None and tools:
        body["tool_choice"] = choice
    user = params.get("user")
    if isinstance(user, str) and user and "metadata" not in body:
        body["metadata"] = {"user_id": user}
    dropped = sorted(k for k in params if k not in _PASSED | _TRANSLATED | _CLIENT_PARAMS)
    if dropped:
        logger.debug(
            "member %s: parameters the Messages API does not take were dropped: %s",
            member.name,
            ", ".join(dropped),
        )
    body["stream"] = True
    return body


def _turns(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(``system``, ``messages``) of a Messages request from chat-form messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    after_tool = False
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system += [b for b in _blocks(content) if b.get("type") == "text"]
            continue
        if role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": _content(content),
            }
            if after_tool:
                turns[-1]["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result]})
            after_tool = True
            continue
        after_tool = False
        if role == "assistant":
            calls = [c for c in message.get("tool_calls") or () if isinstance(c, Mapping)]
            body: str | list[dict[str, Any]] = _content(content)
            if calls:
                body = [b for b in _blocks(content) if b.get("text") != ""]
                body += [_tool_use(c) for c in calls]
            if body:
                turns.append({"role": "assistant", "content": body})
            continue
        turns.append({"role": "user", "content": _content(content)})
    if turns and turns[-1]["role"] == "assistant":
        _trim_prefill(turns)
    if not system:
        return None, turns
    if any("cache_control" in b for b in system):
        return system, turns
    return "\n\n".join(str(b.get("text", "")) for b in system), turns


def _trim_prefill(turns: list[dict[str, Any]]) -> None:
    """A trailing assistant turn (a partial answer to continue) may not end in
    whitespace, the API says: trim it, and drop a turn left empty."""
    last = turns[-1]
    content = last["content"]
    if isinstance(content, str):
        last["content"] = content.rstrip()
        if not last["content"]:
            turns.pop()
    elif content and content[-1].get("type") == "text":
        content[-1] = {**content[-1], "text": str(content[-1].get("text", "")).rstrip()}


def trimmed_prefill(messages: Sequence[Mapping[str, Any]]) -> str:
    """The trailing whitespace :func:`_trim_prefill` takes off a trailing assistant
    message: the member's continuation starts with it again, and the caller has it
    already (SPEC §3.4: text delivered is never sent twice)."""
    if not messages or messages[-1].get("role") != "assistant":
        return ""
    content = messages[-1].get("content")
    if isinstance(content, list) and content and isinstance(content[-1], Mapping):
        content = content[-1].get("text")
    if not isinstance(content, str):
        return ""
    return content[len(content.rstrip()) :]


def _content(content: Any) -> str | list[dict[str, Any]]:
    """Message content: a string stays one; a list of parts becomes blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return _blocks(content)


def _blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [_part(p) for p in content if isinstance(p, Mapping | str)]


def _part(part: Mapping[str, Any] | str) -> dict[str, Any]:
    """One content part as a block; a part already in Anthropic's form is kept."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    kind = part.get("type")
    if kind == "text":
        block: dict[str, Any] = {"type": "text", "text": str(part.get("text", ""))}
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        block = {"type": "image", "source": _image_source(str(url or ""))}
    else:
        return dict(part)
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _image_source(url: str) -> dict[str, Any]:
    """A data URL → a base64 source; anything else → a URL source."""
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type = header.split(";")[0] or "image/png"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    raw = fn.get("arguments")
    try:
        arguments = json.loads(raw) if isinstance(raw, str) and raw.strip() else raw
    except ValueError:
        arguments = None
    return {
        "type": "tool_use",
        "id": str(call.get("id") or ""),
        "name": str(fn.get("name") or ""),
        # The API takes an object only; arguments that are not one cannot be sent.
        "input": arguments if isinstance(arguments, dict) else {},
    }


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool → ``{name, description, input_schema}``; others kept."""
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, Mapping):
        return dict(tool)
    out: dict[str, Any] = {
        "name": fn.get("name", ""),
        "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
    }
    if fn.get("description"):
        out["description"] = fn["description"]
    for source in (fn, tool):
        if "cache_control" in source:
            out["cache_control"] = source["cache_control"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    elif isinstance(choice, Mapping):
        out = dict(choice)
    else:
        out = None
    if parallel is False:
        out = {"type": "auto"} if out is None else out
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


# -- reading answers ------------------------------------------------------------------------


class _Answer:
    """What a stream has said so far: tool blocks, usage, stop reason."""

    def __init__(self, member: Member, lead: str = "") -> None:
        self.member = member
        # Whitespace trimmed off a prefill (see _trim_prefill): the continuation says it
        # again, and the caller has it already.
        self.lead = lead
        self.tools: dict[Any, int] = {}  # block index → ordinal among tool blocks
        self.counts = {
            "input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "output_tokens": 0,
        }
        self.stop_reason: str | None = None
        self.stopped = False

    def chunk(self, **fields: Any) -> Chunk:
        return Chunk(backend=self.member.name, model=self.member.litellm_model, **fields)

    def take_usage(self, raw: Any) -> None:
        # message_delta's counts are cumulative: the later value wins.
        if isinstance(raw, Mapping):
            for name in self.counts:
                value = raw.get(name)
                if isinstance(value, int):
                    self.counts[name] = value

    def unlead(self, text: str) -> str:
        """``text`` without the part of :attr:`lead` it starts with; a text that does not
        start with it ends the matching."""
        if not self.lead:
            return text
        n = 0
        while n < len(text) and n < len(self.lead) and text[n] == self.lead[n]:
            n += 1
        self.lead = self.lead[n:] if n == len(text) else ""
        return text[n:]

    def tool_start(self, index: Any, block: Mapping[str, Any]) -> Chunk:
        ordinal = self.tools[index] = len(self.tools)
        given = block.get("input")
        return self.chunk(
            tool_calls=(
                ToolCallDelta(
                    ordinal,
                    id=block.get("id"),
                    name=block.get("name"),
                    arguments=json.dumps(given) if given else "",
                ),
            )
        )

    def feed(self, event: Mapping[str, Any], kind: Any) -> Chunk | None:
        """One event: the chunk it makes, or None (a held or ignored event)."""
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            btype = block.get("type")
            if btype == "tool_use":
                return self.tool_start(event.get("index"), block)
            if btype == "text" and block.get("text"):
                text = self.unlead(str(block["text"]))
                return self.chunk(text=text) if text else None
            if btype == "thinking" and block.get("thinking"):
                return self.chunk(thinking=str(block["thinking"]))
        elif kind == "content_block_delta":
            return self._delta(event.get("index"), event.get("delta") or {})
        elif kind == "message_start":
            self.take_usage((event.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            if isinstance(reason, str) and reason:
                self.stop_reason = reason
            self.take_usage(event.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            raise _stream_error(event, self.member)
        return None  # ping, content_block_stop, and events added later

    def _delta(self, index: Any, delta: Mapping[str, Any]) -> Chunk | None:
        dtype = delta.get("type")
        if dtype == "text_delta" and delta.get("text"):
            text = self.unlead(str(delta["text"]))
            return self.chunk(text=text) if text else None
        if dtype == "thinking_delta" and delta.get("thinking"):
            return self.chunk(thinking=str(delta["thinking"]))
        if dtype == "signature_delta" and delta.get("signature"):
            return self.chunk(signature=str(delta["signature"]))
        if dtype == "input_json_delta" and index in self.tools and delta.get("partial_json"):
            call = ToolCallDelta(self.tools[index], arguments=str(delta["partial_json"]))
            return self.chunk(tool_calls=(call,))
        return None

    def final(self, **fields: Any) -> Chunk:
        """The last chunk: finish reason and usage (prompt = input + cache read + write)."""
        c = self.counts
        read, write = c["cache_read_input_tokens"], c["cache_creation_input_tokens"]
        usage = Usage(
            prompt_tokens=c["input_tokens"] + read + write,
            completion_tokens=c["output_tokens"],
            cache_read_tokens=read,
            cache_write_tokens=write,
        )
        finish = _FINISH.get(self.stop_reason or "", "stop" if self.stop_reason else None)
        return self.chunk(finish_reason=finish, usage=usage, **fields)


def _whole_message(payload: Mapping[str, Any], member: Member, lead: str = "") -> Chunk:
    """A whole Message (a server that ignored ``stream``) as one chunk."""
    answer = _Answer(member, lead)
    texts: list[str] = []
    thinking: list[str] = []
    signature = ""
    calls: list[ToolCallDelta] = []
    for position, block in enumerate(payload.get("content") or ()):
        if not isinstance(block, Mapping):
            continue
        btype = block.get("type")
        if btype == "text":
            texts.append(str(block.get("text", "")))
        elif btype == "thinking":
            thinking.append(str(block.get("thinking", "")))
            signature = str(block.get("signature") or signature)
        elif btype == "tool_use":
            calls += answer.tool_start(position, block).tool_calls
    answer.take_usage(payload.get("usage"))
    answer.stop_reason = payload.get("stop_reason") or "end_turn"
    return answer.final(
        text=answer.unlead("".join(texts)),
        thinking="".join(thinking),
        signature=signature,
        tool_calls=tuple(calls),
    )


class AnthropicTransport:
    """Streams Anthropic Messages over aiohttp; see the module docstring."""

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
        lead = "" if keep else trimmed_prefill(messages)

        def prepare() -> tuple[str, dict[str, Any], dict[str, str]]:
            return endpoint(member), *build_request(member, messages, params, wire)

        def read(response: aiohttp.ClientResponse, url: str) -> AsyncIterator[Chunk]:
            ctype = response.content_type
            if ctype == "text/event-stream":
                return _events(response, member, keep=keep, lead=lead)
            if ctype == "application/json":
                return _whole(response, member, url, keep, lead)
            raise no_answer(f"{host_port(url)} answered {ctype}, not an event stream", member)

        return exchange(member, prepare, read, _http_error)


async def _whole(
    response: aiohttp.ClientResponse, member: Member, url: str, keep: bool, lead: str
) -> AsyncIterator[Chunk]:
    """A JSON Message answering a streaming request (a server that ignored ``stream``)."""
    payload = await _json_body(response, member, url)
    chunk = _whole_message(payload, member, lead)
    yield replace(chunk, wire=(payload,)) if keep else chunk


async def _events(
    response: aiohttp.ClientResponse, member: Member, *, keep: bool, lead: str = ""
) -> AsyncIterator[Chunk]:
    """The SSE events of a streamed answer, as chunks (see the module docstring).

    ``keep``: every event read rides on the next chunk (:attr:`Chunk.wire`), the rest
    on the final one, for a client that gets the member's own events back.  ``lead``:
    whitespace trimmed off a prefill, left out of the continuation's first text.
    """
    answer = _Answer(member, lead)
    pending = b""
    name: str | None = None  # the last "event:" line, for data without a "type"
    kept: list[dict[str, Any]] = []
    malformed = 0
    async for block in response.content.iter_any():
        lines = (pending + block).split(b"\n") if pending else block.split(b"\n")
        pending = lines.pop()
        if len(pending) > _LINE_LIMIT:
            raise TransportError(
                f"an event longer than {_LINE_LIMIT} bytes", member=member.name, network=True
            )
        for line in lines:
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
                continue
            if not line.startswith(b"data:"):
                continue  # blank separators, "id:", ": comments"
            try:
                event = json.loads(line[5:])
            except ValueError:
                event = None
            if not isinstance(event, dict):
                malformed += 1
                continue
            if keep:
                kept.append(event)
            chunk = answer.feed(event, event.get("type") or name)
            if chunk is not None:
                chunk = replace(chunk, malformed=malformed, wire=tuple(kept))
                malformed, kept = 0, []
                yield chunk
            if answer.stopped:
                break
        if answer.stopped:
            break
    if not (answer.stopped or answer.stop_reason):
        raise TransportError(
            "the stream ended before the answer finished (no stop_reason, no message_stop)",
            member=member.name,
            network=True,
        )
    yield answer.final(malformed=malformed, wire=tuple(kept))


async def _json_body(response: aiohttp.ClientResponse, member: Member, url: str) -> dict[str, Any]:
    raw = await response.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise TransportError(
            f"{host_port(url)} answered with a body that is not a message",
            member=member.name,
            status=response.status,
        )
    if payload.get("type") == "error":
        raise _stream_error(payload, member)
    return payload


def _error_fields(payload: Any) -> tuple[str | None, str | None]:
    """(message, error type) of ``{"type": "error", "error": {"type", "message"}}``
    (or an OpenAI-style error from a proxy in front)."""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict):
        return None, None
    message, kind = error.get("message"), error.get("type")
    if not isinstance(kind, str) or not kind:
        kind = error.get("code") if isinstance(error.get("code"), str) else None
    return (message if isinstance(message, str) else None), kind or None


async def _http_error(response: aiohttp.ClientResponse, member: Member) -> TransportError:
    raw = await response.content.read(_ERROR_BODY_LIMIT)
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw.decode("utf-8", "replace").strip()
    message, code = _error_fields(payload)
    text = message or response.reason or f"HTTP {response.status}"
    if response.status == 400 and any(p in text.lower() for p in _CONTEXT_WINDOW_PHRASES):
        # Another member may have a larger window (classify: request-specific).
        code = "context_length_exceeded"
    return TransportError(
        scrub(text, member_secrets(member)),
        member=member.name,
        status=response.status,
        retry_after=parse_retry_after(response.headers),
        code=code,
    )


def _stream_error(event: Mapping[str, Any], member: Member) -> TransportError:
    """An ``error`` event inside a 200 stream (``overloaded_error`` is a 529 elsewhere)."""
    message, code = _error_fields(dict(event))
    return TransportError(
        scrub(message or "the backend reported an error in the stream", member_secrets(member)),
        member=member.name,
        status=_STREAM_ERROR_STATUS.get(code or ""),
        code=code,
    )
