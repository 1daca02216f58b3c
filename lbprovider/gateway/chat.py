"""The OpenAI Chat Completions form: ``POST /v1/chat/completions`` (SPEC §11.3).

The engine's own request form is Chat Completions, so parsing is mostly checking: the
messages and every parameter the client sent go to the engine as they are (tools,
images, ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``,
``stop``, ``response_format``, ``reasoning_effort``, ...), and the body itself travels
as a :class:`~lbprovider.transport.Wire`, so an OpenAI-compatible member gets exactly
what the client sent (SPEC §4.2 pass-through).  Answers are ``chat.completion`` objects
or ``chat.completion.chunk`` events ending in ``data: [DONE]``; a member's own events,
when it spoke this API, are sent back as they came with ``model`` naming the member
(``provider/model``).  Thinking text from an Anthropic member travels as
``reasoning_content``, the field OpenAI-compatible reasoning servers use.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lbprovider.errors import InvalidRequestError
from lbprovider.gateway.forms import Asked, ErrorKind, session_key, sse
from lbprovider.transport import Api, Chunk, Wire

if TYPE_CHECKING:
    from lbprovider.provider import Result
    from lbprovider.routing import RequestTrace

__all__ = ["FORM", "ChatForm", "openai_error"]

# Keys of the body that are not backend parameters.
_NOT_PARAMS = frozenset({"model", "messages", "stream", "stream_options"})
_HINT = "see https://platform.openai.com/docs/api-reference/chat/create"
_OPENAI_TYPES = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.UNKNOWN_MODEL: "not_found_error",
    ErrorKind.TOO_LARGE: "invalid_request_error",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.OVERLOADED: "server_error",
    ErrorKind.API_ERROR: "server_error",
}
_OPENAI_CODES = {
    ErrorKind.AUTHENTICATION: "invalid_api_key",
    ErrorKind.UNKNOWN_MODEL: "model_not_found",
    ErrorKind.TOO_LARGE: "request_too_large",
    ErrorKind.RATE_LIMIT: "rate_limit_exceeded",
    ErrorKind.OVERLOADED: "service_unavailable",
}


def openai_error(status: int, kind: ErrorKind, message: str) -> dict[str, Any]:
    """OpenAI's error object (Chat Completions and Responses share it)."""
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES[kind],
            "param": None,
            "code": _OPENAI_CODES.get(kind),
        }
    }


def _tool_call_dicts(chunk: Chunk) -> list[dict[str, Any]]:
    out = []
    for d in chunk.tool_calls:
        call: dict[str, Any] = {"index": d.index, "function": {"arguments": d.arguments}}
        if d.id:
            call["id"] = d.id
            call["type"] = "function"
        if d.name:
            call["function"]["name"] = d.name
        out.append(call)
    return out


class ChatForm:
    """Chat Completions (see the module docstring)."""

    name = "/v1/chat/completions"

    def parse(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Asked:
        """Check the body and hand it to the engine as it is."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError(
                "is required (a load balancer's name)", field="model", hint=_HINT
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError(
                "must be a non-empty list of messages", field="messages", hint=_HINT
            )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequestError("must be true or false", field="stream")
        n = body.get("n")
        if n not in (None, 1):
            raise InvalidRequestError(
                "only one choice per request is served",
                field="n",
                hint="leave n out or set it to 1",
            )
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        params = {k: v for k, v in body.items() if k not in _NOT_PARAMS}
        cache_key = body.get("prompt_cache_key")
        return Asked(
            model=model,
            messages=list(messages),
            params=params,
            stream=stream,
            wire=Wire(Api.OPENAI_CHAT, dict(body)),
            affinity_key=session_key(headers)
            or (cache_key if isinstance(cache_key, str) else None),
            options={"include_usage": include_usage},
        )

    def answer(self, asked: Asked, result: Result) -> dict[str, Any]:
        """One ``chat.completion`` from the engine's whole answer."""
        message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
        if result.tool_calls:
            message["tool_calls"] = result.tool_calls
        if result.thinking:
            message["reasoning_content"] = result.thinking
        out: dict[str, Any] = {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": result.finish_reason
                    or ("tool_calls" if result.tool_calls else "stop"),
                    "logprobs": None,
                }
            ],
        }
        if result.usage is not None:
            out["usage"] = result.usage.to_dict()
        return out

    def events(self, asked: Asked, model: str) -> ChatEvents:
        """The ``chat.completion.chunk`` events of one streamed answer."""
        return ChatEvents(model, include_usage=bool(asked.options.get("include_usage")))

    def error(self, status: int, kind: ErrorKind, message: str) -> dict[str, Any]:
        """OpenAI's error object."""
        return openai_error(status, kind, message)


class ChatEvents:
    """Engine chunks → ``chat.completion.chunk`` events (see :class:`~.forms.EventWriter`)."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self._id = "chatcmpl-" + secrets.token_hex(12)
        self._created = int(time.time())
        self._model = model
        self._include_usage = include_usage
        self._role_sent = False
        self._usage_sent = False

    def _event(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }
        )

    def open(self) -> bytes:
        """Nothing yet: the role comes with the first chunk (the member's own, when it
        spoke this API, so it is not sent twice)."""
        return b""

    def chunk(self, chunk: Chunk) -> bytes:
        """One engine chunk as events."""
        if chunk.model:
            self._model = chunk.model
        if chunk.wire:
            return b"".join(self._passed(event) for event in chunk.wire)
        out = b""
        if not self._role_sent:
            self._role_sent = True
            out += self._event({"role": "assistant", "content": ""})
        delta: dict[str, Any] = {}
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.thinking:
            delta["reasoning_content"] = chunk.thinking
        if chunk.tool_calls:
            delta["tool_calls"] = _tool_call_dicts(chunk)
        if delta or chunk.finish_reason:
            out += self._event(delta, chunk.finish_reason)
        return out

    def _passed(self, event: dict[str, Any]) -> bytes:
        """A member's own event, sent back as it came but for ``model`` (and a usage
        event the client did not ask for, which we asked the member for)."""
        if not event.get("choices") and event.get("usage") is not None:
            if not self._include_usage:
                return b""
            self._usage_sent = True
        self._role_sent = True
        return sse({**event, "model": self._model})

    def close(self, trace: RequestTrace) -> bytes:
        """The usage event (when asked for) and ``[DONE]``."""
        out = b""
        if self._include_usage and not self._usage_sent and trace.usage is not None:
            out += sse(
                {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": trace.usage.to_dict(),
                }
            )
        return out + b"data: [DONE]\n\n"

    def fail(self, status: int, kind: ErrorKind, message: str) -> bytes:
        """An error event and no ``[DONE]``: the client knows the answer is incomplete."""
        return sse(openai_error(status, kind, message))


FORM = ChatForm()
