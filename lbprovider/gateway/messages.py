"""The Anthropic Messages form of the gateway (SPEC §11.3): ``POST /v1/messages``.

A request becomes the engine's Chat Completions messages and keyword arguments, and its
own body rides along as a :class:`~lbprovider.transport.Wire`, so an Anthropic member gets
it untouched (SPEC §4.2 pass-through) while an OpenAI member gets the translation:

- ``system`` (a string or text blocks) → a system message, ``cache_control`` kept on the
  text parts; ``text`` and ``image`` blocks (base64 → data URL) → content parts;
- assistant ``tool_use`` → ``tool_calls``; user ``tool_result`` → ``tool`` messages,
  placed before the rest of that user turn;
- ``tools`` with an ``input_schema`` → function tools; hosted tools (web search, bash,
  ...) and ``thinking`` blocks in the history cannot reach a translated member: they are
  dropped and named in :attr:`~lbprovider.gateway.forms.Asked.dropped`;
- ``top_k``, ``thinking``, ``metadata`` and ``service_tier`` stay out of the engine's
  keyword arguments (OpenAI members would reject them): Anthropic members see them in
  the wire body.

Answers go the other way: the engine's chunks become the ``message_start`` …
``message_stop`` event sequence (:class:`MessagesWriter`), and a pass-through member's
own events are sent as they came, ``model`` rewritten.  :func:`count_tokens` answers
``POST /v1/messages/count_tokens`` with the estimate the TPM window uses.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lbprovider.errors import InvalidRequestError
from lbprovider.gateway.forms import Asked, ErrorKind, session_key, sse
from lbprovider.transport import Api, Chunk, ToolCallDelta, Usage, Wire
from lbprovider.window import estimate_tokens

if TYPE_CHECKING:
    from lbprovider.provider import Result
    from lbprovider.routing import RequestTrace

__all__ = ["FORM", "MessagesForm", "MessagesWriter", "count_tokens", "stop_reason", "usage_dict"]

# Anthropic's error types, by the kind every form names (docs: "HTTP errors").
_ERROR_TYPES: dict[ErrorKind, str] = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.UNKNOWN_MODEL: "not_found_error",
    ErrorKind.TOO_LARGE: "request_too_large",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.API_ERROR: "api_error",
}

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Client headers an Anthropic member must see as the client sent them.
_WIRE_HEADERS = ("anthropic-beta", "anthropic-version")
# Request fields that reach the engine under the same name.
_PASSED = ("temperature", "top_p")
_THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def _missing(field: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"is required ({what})", field=field)


def _wrong(field: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"must be {what}", field=field)


class _Dropped:
    """What the request carried that a translated member will not see, each named once."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> None:
        if name not in self.names:
            self.names.append(name)


# --- request: Anthropic JSON → the engine's chat messages ---------------------------


def _text_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise _wrong(f"{where}.text", "a string")
    part: dict[str, Any] = {"type": "text", "text": text}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _image_part(block: Mapping[str, Any], where: str, dropped: _Dropped) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise _missing(f"{where}.source", "an image source object")
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str):
            raise _missing(f"{where}.source.media_type", "a string such as 'image/png'")
        if not isinstance(data, str):
            raise _missing(f"{where}.source.data", "base64 text")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        link = source.get("url")
        if not isinstance(link, str):
            raise _missing(f"{where}.source.url", "a string")
        url = link
    else:
        # A Files API reference means nothing to an OpenAI member.
        dropped.add(f"image source {kind}")
        return None
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if block.get("cache_control") is not None:
        part["cache_control"] = block["cache_control"]
    return part


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    """``content`` as a list of typed blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _wrong(where, "a string or a list of content blocks")
    for j, block in enumerate(content):
        if not isinstance(block, Mapping):
            raise _wrong(f"{where}[{j}]", "a content block object")
        if not isinstance(block.get("type"), str):
            raise _missing(f"{where}[{j}].type", "the block's type")
    return content


def _tool_message(
    block: Mapping[str, Any], where: str, dropped: _Dropped
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool_result`` block → a ``tool`` message, and the images it held (a ``tool``
    message takes text only, so they follow in the user turn)."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise _missing(f"{where}.tool_use_id", "the id of the tool_use it answers")
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for k, inner in enumerate(_blocks(content, f"{where}.content")):
            at = f"{where}.content[{k}]"
            if inner["type"] == "text":
                texts.append(_text_part(inner, at)["text"])
            elif inner["type"] == "image":
                image = _image_part(inner, at, dropped)
                if image is not None:
                    images.append(image)
            else:
                dropped.add(str(inner["type"]))
    text = "\n".join(texts)
    if block.get("is_error") is True:
        # OpenAI has no error flag on a tool result: say it in the text.
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user_messages(content: Any, where: str, dropped: _Dropped) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    tool_images: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, where)):
        at, kind = f"{where}[{j}]", block["type"]
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            image = _image_part(block, at, dropped)
            if image is not None:
                parts.append(image)
        elif kind == "tool_result":
            message, images = _tool_message(block, at, dropped)
            tools.append(message)
            tool_images += images
        elif kind in _THINKING_BLOCKS:
            dropped.add("thinking")
        else:
            dropped.add(kind)  # documents, search results, server tool results, ...
    out = list(tools)
    parts = tool_images + parts
    if parts:
        simple = len(parts) == 1 and parts[0]["type"] == "text" and len(parts[0]) == 2
        out.append({"role": "user", "content": parts[0]["text"] if simple else parts})
    return out


def _assistant_message(content: Any, where: str, dropped: _Dropped) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, where)):
        at, kind = f"{where}[{j}]", block["type"]
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise _missing(f"{at}.id", "the tool call's id")
            if not isinstance(name, str) or not name:
                raise _missing(f"{at}.name", "the tool's name")
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        elif kind in _THINKING_BLOCKS:
            dropped.add("thinking")
        else:
            dropped.add(kind)
    message: dict[str, Any] = {"role": "assistant"}
    if any("cache_control" in p for p in parts):
        message["content"] = parts
    elif parts:
        message["content"] = "".join(p["text"] for p in parts)
    else:
        message["content"] = None if calls else ""
    if calls:
        message["tool_calls"] = calls
    return message


def _system_message(system: Any, field: str = "system") -> dict[str, Any] | None:
    if system is None:
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    if not isinstance(system, list):
        raise _wrong(field, "a string or a list of text blocks")
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(system):
        where = f"{field}[{j}]"
        if not isinstance(block, Mapping) or block.get("type") != "text":
            raise _wrong(where, "a text block")
        parts.append(_text_part(block, where))
    return {"role": "system", "content": parts} if parts else None


def _translate_messages(body: Mapping[str, Any], dropped: _Dropped) -> list[dict[str, Any]]:
    """``system`` + ``messages`` in the engine's chat form."""
    raw = body.get("messages")
    if raw is None:
        raise _missing("messages", "a non-empty list of messages")
    if not isinstance(raw, list) or not raw:
        raise _wrong("messages", "a non-empty list of messages")
    out: list[dict[str, Any]] = []
    system = _system_message(body.get("system"))
    if system is not None:
        out.append(system)
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise _wrong(where, "a message object")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise _wrong(f"{where}.role", "'user', 'assistant' or 'system'")
        if "content" not in message:
            raise _missing(f"{where}.content", "a string or a list of content blocks")
        content = message["content"]
        if role == "system":
            # A mid-conversation system message (Claude Code sends them to newer models):
            # a system message at the same place in the chat form.
            mid = _system_message(content, f"{where}.content")
            if mid is not None:
                out.append(mid)
        elif role == "user":
            out += _user_messages(content, f"{where}.content", dropped)
        else:
            out.append(_assistant_message(content, f"{where}.content", dropped))
    return out


def _tools(raw: Any, dropped: _Dropped) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _wrong("tools", "a list of tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _wrong(where, "a tool object")
        if "input_schema" not in tool:
            # A hosted tool (web_search_…, bash_…, text_editor_…) runs at Anthropic only.
            dropped.add(str(tool.get("type") or tool.get("name") or "tool"))
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _missing(f"{where}.name", "the tool's name")
        if not isinstance(tool["input_schema"], Mapping):
            raise _wrong(f"{where}.input_schema", "a JSON schema object")
        function: dict[str, Any] = {"name": name, "parameters": dict(tool["input_schema"])}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(raw: Any) -> tuple[Any, bool]:
    """OpenAI's ``tool_choice`` and whether parallel tool calls were disabled."""
    if not isinstance(raw, Mapping):
        raise _wrong("tool_choice", "an object with a 'type'")
    kind = raw.get("type")
    serial = raw.get("disable_parallel_tool_use") is True
    if kind == "auto":
        return "auto", serial
    if kind == "any":
        return "required", serial
    if kind == "none":
        return "none", serial
    if kind == "tool":
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _missing("tool_choice.name", "the tool's name")
        return {"type": "function", "function": {"name": name}}, serial
    raise _wrong("tool_choice.type", "'auto', 'any', 'tool' or 'none'")


def _affinity_key(body: Mapping[str, Any], headers: Mapping[str, str]) -> str | None:
    """A session header (SPEC §3.5), else the body's ``metadata.user_id``."""
    if key := session_key(headers):
        return key
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        user = metadata.get("user_id")
        if isinstance(user, str) and user:
            return user
    return None


# --- answers: engine → Anthropic JSON ------------------------------------------------


def stop_reason(finish_reason: str | None, tool_calls: bool = False) -> str:
    """Anthropic's ``stop_reason`` for an OpenAI ``finish_reason``.

    Some OpenAI-compatible servers say ``stop`` after a tool call; an Anthropic client
    runs tools on ``tool_use``, so tool calls win over a plain stop.
    """
    if tool_calls and finish_reason in (None, "stop"):
        return "tool_use"
    return _STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage_dict(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage object: ``input_tokens`` counts the uncached input only."""
    u = usage or Usage()
    fresh = u.prompt_tokens - u.cache_read_tokens - u.cache_write_tokens
    return {
        "input_tokens": max(0, fresh),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    }


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _is_wire_event(event: Mapping[str, Any]) -> bool:
    """An Anthropic stream event (as opposed to an OpenAI chunk of another member)."""
    return isinstance(event.get("type"), str) and "choices" not in event


def _from_events(events: Sequence[Mapping[str, Any]], model: str | None) -> dict[str, Any] | None:
    """The message a pass-through member's events spell, as the SDK accumulates it."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    json_parts: dict[int, list[str]] = {}
    for event in events:
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), Mapping):
            message = json.loads(json.dumps(event["message"]))  # a deep copy
            assert message is not None
            message["content"] = list(message.get("content") or [])
        elif message is None:
            continue
        elif kind == "content_block_start" and isinstance(event.get("content_block"), Mapping):
            blocks[int(event.get("index", len(blocks)))] = dict(event["content_block"])
        elif kind == "content_block_delta":
            index, delta = int(event.get("index", 0)), event.get("delta") or {}
            block = blocks.get(index)
            if block is None or not isinstance(delta, Mapping):
                continue
            dtype = delta.get("type")
            if dtype == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            elif dtype == "input_json_delta":
                json_parts.setdefault(index, []).append(str(delta.get("partial_json", "")))
            elif dtype == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            elif dtype == "signature_delta":
                block["signature"] = str(delta.get("signature", ""))
            elif dtype == "citations_delta":
                block["citations"] = [*(block.get("citations") or []), delta.get("citation")]
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            if isinstance(delta, Mapping):
                message.update(delta)
            usage = event.get("usage")
            if isinstance(usage, Mapping):
                merged = dict(message.get("usage") or {})
                merged.update({k: v for k, v in usage.items() if v is not None})
                message["usage"] = merged
    if message is None:
        return None
    for index, parts in json_parts.items():
        blocks[index]["input"] = _arguments("".join(parts))
    message["content"] += [blocks[i] for i in sorted(blocks)]
    if model is not None:
        message["model"] = model
    return message


def _answer(asked: Asked, result: Result) -> dict[str, Any]:
    del asked
    if result.wire:
        events = [e for e in result.wire if _is_wire_event(e)]
        whole = [e for e in events if e["type"] == "message"]
        if whole:  # the member answered with one JSON message, not a stream
            return {**whole[-1], "model": result.model}
        passed = _from_events(events, result.model) if events else None
        if passed is not None:
            return passed
    content: list[dict[str, Any]] = []
    if result.thinking or result.signature:
        content.append(
            {"type": "thinking", "thinking": result.thinking, "signature": result.signature}
        )
    if result.text or not result.tool_calls:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _tool_id(),
                "name": function.get("name") or "",
                "input": _arguments(str(function.get("arguments") or "")),
            }
        )
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": content,
        "stop_reason": stop_reason(result.finish_reason, bool(result.tool_calls)),
        "stop_sequence": None,
        "usage": usage_dict(result.usage),
    }


# --- streaming -------------------------------------------------------------------------


class MessagesWriter:
    """The Anthropic event sequence of one streamed answer.

    Translated chunks open and close content blocks as their kind changes (thinking,
    text, one ``tool_use`` block per tool-call index).  A chunk carrying a pass-through
    member's own events is sent as those events, ``model`` rewritten in
    ``message_start`` and block indexes shifted past any block already sent; the writer
    follows them (started, open block, next index, ended), so a continuation from a
    translated member afterwards still yields one valid sequence with one
    ``message_start`` and one ``message_stop``.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._started = False
        self._delta_sent = False
        self._stopped = False
        self._next_index = 0
        self._open_type: str | None = None  # the open block's type, whoever opened it
        self._open_index = 0
        self._open_tool: int | None = None  # the tool-call index of a translated tool_use
        self._in_wire = False
        self._wire_base = 0
        self._finish: str | None = None
        self._tools = False
        self._usage: Usage | None = None

    def open(self) -> bytes:
        """Nothing yet: ``message_start`` goes out with the first chunk, which may be a
        pass-through member's own."""
        return b""

    def chunk(self, chunk: Chunk) -> bytes:
        """The events of one engine chunk."""
        if self._stopped:
            return b""
        events = [e for e in chunk.wire if _is_wire_event(e)]
        # A member that answered one JSON message instead of a stream: no events to
        # send as they came, so the chunk is encoded like a translated one.
        if events and not any(e["type"] == "message" for e in events):
            return b"".join(self._passed(e) for e in events)
        return self._translated(chunk)

    def close(self, trace: RequestTrace) -> bytes:
        """Close the open block, then ``message_delta`` (stop reason and the usage of every
        member that contributed) and ``message_stop``."""
        if self._stopped:
            return b""
        out = [self._start(), self._close_block()]
        if not self._delta_sent:
            usage = usage_dict(trace.usage or self._usage)
            out.append(
                sse(
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": stop_reason(self._finish, self._tools),
                            "stop_sequence": None,
                        },
                        "usage": usage,
                    },
                    "message_delta",
                )
            )
        out.append(sse({"type": "message_stop"}, "message_stop"))
        self._stopped = True
        return b"".join(out)

    def fail(self, status: int, kind: ErrorKind, message: str) -> bytes:
        """``event: error`` with ``overloaded_error``: the stream broke and nobody could
        continue it; never a clean end."""
        del status, kind
        self._stopped = True
        return sse(
            {"type": "error", "error": {"type": "overloaded_error", "message": message}}, "error"
        )

    # -- translated chunks

    def _start(self, usage: Usage | None = None) -> bytes:
        if self._started:
            return b""
        self._started = True
        u = usage_dict(usage)
        message: dict[str, Any] = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": u["input_tokens"], "output_tokens": 0},
        }
        return sse({"type": "message_start", "message": message}, "message_start")

    def _close_block(self) -> bytes:
        if self._open_type is None:
            return b""
        self._open_type = self._open_tool = None
        return sse({"type": "content_block_stop", "index": self._open_index}, "content_block_stop")

    def _open_block(self, block: dict[str, Any], tool: int | None = None) -> bytes:
        out = self._close_block()
        self._open_type, self._open_index, self._open_tool = block["type"], self._next_index, tool
        self._next_index += 1
        event = {"type": "content_block_start", "index": self._open_index, "content_block": block}
        return out + sse(event, "content_block_start")

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self._open_index, "delta": delta}
        return sse(event, "content_block_delta")

    def _translated(self, chunk: Chunk) -> bytes:
        out = [self._start(chunk.usage)]
        if chunk.is_content:
            self._in_wire = False
        if chunk.thinking:
            if self._open_type != "thinking":
                out.append(self._open_block({"type": "thinking", "thinking": "", "signature": ""}))
            out.append(self._delta({"type": "thinking_delta", "thinking": chunk.thinking}))
        if chunk.signature:
            if self._open_type != "thinking":
                out.append(self._open_block({"type": "thinking", "thinking": "", "signature": ""}))
            out.append(self._delta({"type": "signature_delta", "signature": chunk.signature}))
        if chunk.text:
            if self._open_type != "text":
                out.append(self._open_block({"type": "text", "text": ""}))
            out.append(self._delta({"type": "text_delta", "text": chunk.text}))
        for call in chunk.tool_calls:
            out.append(self._tool_delta(call))
        if chunk.finish_reason:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return b"".join(out)

    def _tool_delta(self, call: ToolCallDelta) -> bytes:
        out = b""
        if self._open_type != "tool_use" or self._open_tool != call.index:
            block = {
                "type": "tool_use",
                "id": call.id or _tool_id(),
                "name": call.name or "",
                "input": {},
            }
            out = self._open_block(block, tool=call.index)
            self._tools = True
        if call.arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": call.arguments})
        return out

    # -- a pass-through member's own events

    def _passed(self, event: Mapping[str, Any]) -> bytes:
        kind = str(event["type"])
        if kind == "message_start":
            if self._started:
                return b""
            self._started = True
            message = dict(event.get("message") or {})
            message["model"] = self.model
            return sse({**event, "message": message}, kind)
        if kind == "error":
            return b""  # the engine decides what an error ends: fail() says it
        out = self._start()
        if not self._in_wire:
            out += self._close_block()
            self._in_wire, self._wire_base = True, self._next_index
        if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            index = self._wire_base + int(event.get("index", 0))
            if index != event.get("index"):
                event = {**event, "index": index}
            if kind == "content_block_start":
                block = event.get("content_block")
                self._open_type = str(block.get("type")) if isinstance(block, Mapping) else "?"
                self._open_index, self._open_tool = index, None
                self._next_index = max(self._next_index, index + 1)
                self._tools = self._tools or self._open_type == "tool_use"
            elif kind == "content_block_stop" and index == self._open_index:
                self._open_type = None
        elif kind == "message_delta":
            self._delta_sent = True
        elif kind == "message_stop":
            self._stopped = True
        return out + sse(event, kind)


class MessagesForm:
    """The Anthropic Messages API (``POST /v1/messages``), as a gateway form."""

    name = "/v1/messages"

    def parse(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Asked:
        """The request in the engine's terms, the body kept for Anthropic members."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model", "the name of a served load balancer")
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _missing("max_tokens", "a positive integer")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _wrong("max_tokens", "a positive integer")
        dropped = _Dropped()
        messages = _translate_messages(body, dropped)
        params: dict[str, Any] = {"max_tokens": max_tokens}
        for key in _PASSED:
            if body.get(key) is not None:
                params[key] = body[key]
        stops = body.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise _wrong("stop_sequences", "a list of strings")
            if stops:
                params["stop"] = list(stops)
        tools = _tools(body.get("tools"), dropped)
        if tools:
            params["tools"] = tools
            if body.get("tool_choice") is not None:
                choice, serial = _tool_choice(body["tool_choice"])
                params["tool_choice"] = choice
                if serial:
                    params["parallel_tool_calls"] = False
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _wrong("stream", "true or false")
        lower = {str(k).lower(): str(v) for k, v in headers.items()}
        wire_headers = {h: lower[h] for h in _WIRE_HEADERS if h in lower}
        return Asked(
            model=model,
            messages=messages,
            params=params,
            stream=stream,
            wire=Wire(Api.ANTHROPIC_MESSAGES, body, wire_headers),
            affinity_key=_affinity_key(body, headers),
            dropped=tuple(dropped.names),
        )

    def answer(self, asked: Asked, result: Result) -> dict[str, Any]:
        """An Anthropic ``message`` object; a pass-through member's own content as it
        sent it, ``model`` rewritten to the serving member's."""
        return _answer(asked, result)

    def events(self, asked: Asked, model: str) -> MessagesWriter:
        """The event writer of one streamed answer."""
        del asked
        return MessagesWriter(model)

    def error(self, status: int, kind: ErrorKind, message: str) -> dict[str, Any]:
        """``{"type": "error", "error": {"type": ..., "message": ...}}``."""
        del status
        return {"type": "error", "error": {"type": _ERROR_TYPES[kind], "message": message}}


FORM = MessagesForm()


def count_tokens(body: Mapping[str, Any]) -> dict[str, int]:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, the estimate the TPM
    window uses, over the translated messages, the system prompt and the tools."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _missing("model", "the name of a served load balancer")
    messages = _translate_messages(body, _Dropped())
    extra: list[dict[str, Any]] = []
    if body.get("tools") is not None:
        extra.append({"role": "system", "content": json.dumps(body["tools"], ensure_ascii=False)})
    # Tool calls in the history are input too, and often the largest part of it.
    for message in messages:
        if message.get("tool_calls"):
            extra.append({"role": "assistant", "content": json.dumps(message["tool_calls"])})
    return {"input_tokens": estimate_tokens([*messages, *extra], "")}
