"""The OpenAI Responses form of the gateway (SPEC §11.3 ``POST /v1/responses``).

The subset coding assistants send (Codex): ``instructions``, ``input`` as a string or
items (``message``, ``function_call``, ``function_call_output``), function tools,
``tool_choice``, ``max_output_tokens``, ``reasoning``, ``stream``.  No member speaks
Responses, so every request is translated to the engine's Chat Completions form and
every answer back; nothing is passed through.

This server is stateless: ``store`` is ignored and ``previous_response_id`` is refused,
the client sends the whole conversation every turn (Codex does, with ``store: false``).
What a Chat Completions member cannot take — hosted tools (``web_search``, ...),
``reasoning`` items — is dropped and named in :attr:`~.forms.Asked.dropped`.

A streamed answer is the Responses event sequence: ``response.created``,
``response.in_progress``, then per output item ``response.output_item.added``,
its content events and ``response.output_item.done``, and at the end
``response.completed`` carrying the whole response (``response.incomplete`` when the
answer was cut at its output cap, ``response.failed`` when it broke), each event with
its ``sequence_number``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lbprovider.errors import InvalidRequestError
from lbprovider.gateway.chat import openai_error
from lbprovider.gateway.forms import Asked, ErrorKind, session_key, sse
from lbprovider.transport import Chunk, ToolCallDelta, Usage

if TYPE_CHECKING:
    from lbprovider.provider import Result
    from lbprovider.routing import RequestTrace

__all__ = ["FORM", "ResponsesForm", "ResponsesWriter"]

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_SIMPLE_CHOICES = frozenset({"auto", "none", "required"})
# Sampling settings a chat member takes under the same name.
_PASSED = ("temperature", "top_p", "parallel_tool_calls")
_STATELESS_HINT = "this server keeps no responses: send the whole conversation in 'input'"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class _Dropped:
    """What the request carried that no member will see, each named once, in order."""

    def __init__(self) -> None:
        self.names: dict[str, None] = {}

    def add(self, name: str) -> None:
        self.names.setdefault(name, None)


# --- requests ------------------------------------------------------------------------


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content (a string or Responses parts) as Chat Completions parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequestError("must be a string or a list of content parts", field=where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(part, Mapping):
            raise InvalidRequestError("must be a content part object", field=at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError("needs a 'text' string", field=f"{at}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise InvalidRequestError(
                    "needs an 'image_url' (a URL or a data: URL); stored files are not kept",
                    field=f"{at}.image_url",
                )
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            data = part.get("file_data")
            if not isinstance(data, str) or not data:
                raise InvalidRequestError(
                    "needs 'file_data'; stored files and file URLs are not fetched",
                    field=f"{at}.file_data",
                )
            file: dict[str, Any] = {"file_data": data}
            if isinstance(part.get("filename"), str):
                file["filename"] = part["filename"]
            parts.append({"type": "file", "file": file})
        else:
            raise InvalidRequestError(f"content part type {kind!r} is not supported", field=at)
    return parts


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (what every member takes), else the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _tool_output(output: Any, where: str) -> str:
    """A function_call_output's ``output``: a string, or parts whose text is joined."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [p.get("text", "") for p in output if isinstance(p, Mapping)]
        if len(texts) == len(output) and all(
            p.get("type") in ("input_text", "output_text") for p in output
        ):
            return "".join(str(t) for t in texts)
        raise InvalidRequestError(
            "only text output parts can reach a tool message", field=f"{where}.output"
        )
    raise InvalidRequestError("must be a string or a list of text parts", field=f"{where}.output")


def _messages(body: Mapping[str, Any], dropped: _Dropped) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise InvalidRequestError("must be a string", field="instructions")
        if instructions:
            messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        return messages
    if not isinstance(given, list):
        raise InvalidRequestError("is required: a string or a list of input items", field="input")
    for i, item in enumerate(given):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidRequestError("must be an input item object", field=where)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise InvalidRequestError(
                    "must be user, assistant, system or developer", field=f"{where}.role"
                )
            content = _content(_text_parts(item.get("content"), f"{where}.content"))
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequestError("needs a 'call_id' string", field=f"{where}.call_id")
            if not isinstance(name, str) or not name:
                raise InvalidRequestError("needs a 'name' string", field=f"{where}.name")
            arguments = item.get("arguments", "")
            if isinstance(item.get("namespace"), str) and item["namespace"]:
                name = qualified(item["namespace"], name)
            call = {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
            last = messages[-1] if messages else None
            # A turn's text and its tool calls (or several calls) are one assistant
            # message in Chat Completions.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequestError("needs a 'call_id' string", field=f"{where}.call_id")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": _tool_output(item.get("output"), where),
                }
            )
        elif kind == "reasoning":
            # Encrypted or summarised reasoning of an earlier OpenAI turn: no chat
            # member can take it back.
            dropped.add("reasoning")
        elif kind == "item_reference":
            raise InvalidRequestError(
                "refers to a stored item", field=f"{where}.id", hint=_STATELESS_HINT
            )
        else:
            dropped.add(str(kind))
    if not messages:
        raise InvalidRequestError("holds no message a member can take", field="input")
    return messages


def _tools(
    body: Mapping[str, Any], dropped: _Dropped
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chat members' tools, and the Responses function tools echoed in answers."""
    given = body.get("tools")
    if given is None:
        return [], []
    if not isinstance(given, list):
        raise InvalidRequestError("must be a list of tools", field="tools")
    chat: list[dict[str, Any]] = []
    echoed: list[dict[str, Any]] = []
    for i, tool in enumerate(given):
        if not isinstance(tool, Mapping):
            raise InvalidRequestError("must be a tool object", field=f"tools[{i}]")
        kind = tool.get("type")
        if kind == "namespace" and isinstance(tool.get("name"), str):
            # A group of function tools (Codex's sub-agent tools): each becomes a chat tool
            # named NAMESPACE__NAME, split back in the calls the answer names.
            inner, _ = _tools({"tools": tool.get("tools") or []}, dropped)
            for grouped in inner:
                grouped["function"]["name"] = qualified(tool["name"], grouped["function"]["name"])
            chat += inner
            echoed.append(dict(tool))
            continue
        if kind != "function":
            # Hosted tools run inside OpenAI's servers; no member here can run them.
            dropped.add(str(kind))
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("needs a 'name' string", field=f"tools[{i}].name")
        function: dict[str, Any] = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        chat.append({"type": "function", "function": function})
        echoed.append({"type": "function", **function})
    return chat, echoed


def _tool_choice(choice: Any, dropped: _Dropped) -> Any:
    if isinstance(choice, str):
        if choice not in _SIMPLE_CHOICES:
            raise InvalidRequestError("must be auto, none or required", field="tool_choice")
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("needs a 'name' string", field="tool_choice.name")
        return {"type": "function", "function": {"name": name}}
    if isinstance(choice, Mapping) and choice.get("type") == "allowed_tools":
        mode = choice.get("mode")
        return mode if isinstance(mode, str) and mode in _SIMPLE_CHOICES else "auto"
    # A hosted tool forced: that tool was dropped, so the model chooses.
    dropped.add("tool_choice")
    return None


def _response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as Chat Completions ``response_format`` (structured output)."""
    fmt = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(fmt, Mapping):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    return None


# --- answers -------------------------------------------------------------------------


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content if status != "in_progress" else [],
    }


NAMESPACE_SEP = "__"


def qualified(namespace: str, name: str) -> str:
    """A namespaced tool's name in the chat form (which has no namespaces)."""
    return f"{namespace}{NAMESPACE_SEP}{name}"


def namespaces(tools: Any) -> frozenset[str]:
    """The namespace tools' names of a request's ``tools``."""
    if not isinstance(tools, list):
        return frozenset()
    return frozenset(
        t["name"]
        for t in tools
        if isinstance(t, Mapping)
        and t.get("type") == "namespace"
        and isinstance(t.get("name"), str)
    )


def _call_item(
    item_id: str,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
    spaces: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    space, sep, short = name.partition(NAMESPACE_SEP)
    if sep and space in spaces:
        item.update(namespace=space, name=short)
    return item


def _response(
    asked: Asked,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    incomplete: bool = False,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``response`` object, with the request's settings echoed as the API does."""
    o = asked.options
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": o.get("instructions"),
        "max_output_tokens": o.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": o.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": o.get("reasoning"),
        "store": False,
        "temperature": o.get("temperature"),
        "tool_choice": o.get("tool_choice", "auto"),
        "tools": o.get("tools", []),
        "top_p": o.get("top_p"),
        "truncation": "disabled",
        "usage": _usage(usage),
        "metadata": o.get("metadata"),
        "prompt_cache_key": o.get("prompt_cache_key"),
    }


@dataclass
class _Item:
    """One output item of a streamed answer, while it is open and once done."""

    index: int
    id: str
    kind: str  # "message" | "function_call"
    text: str = ""
    call_id: str = ""
    name: str = ""
    tool_index: int = -1  # the engine's tool-call index this item carries
    spaces: frozenset[str] = frozenset()  # the request's tool namespaces

    def done(self, status: str = "completed") -> dict[str, Any]:
        if self.kind == "message":
            return _message_item(self.id, self.text, status)
        return _call_item(self.id, self.call_id, self.name, self.text, status, self.spaces)


@dataclass
class ResponsesWriter:
    """The Responses events of one streamed answer (see the module docstring)."""

    asked: Asked
    model: str
    response_id: str = field(default_factory=lambda: _new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    _seq: int = 0
    _items: list[_Item] = field(default_factory=list)
    _open: _Item | None = None
    _finish: str | None = None

    def _event(self, kind: str, **data: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **data}
        self._seq += 1
        return sse(payload, event=kind)

    def _snapshot(self, status: str, usage: Usage | None = None, **extra: Any) -> dict[str, Any]:
        output = []
        if status != "in_progress":
            # An item still open when the answer broke was cut short.
            output = [i.done("incomplete" if i is self._open else "completed") for i in self._items]
        return _response(
            self.asked,
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            status=status,
            output=output,
            usage=usage,
            **extra,
        )

    def open(self) -> bytes:
        """``response.created`` and ``response.in_progress``: an empty response."""
        return self._event(
            "response.created", response=self._snapshot("in_progress")
        ) + self._event("response.in_progress", response=self._snapshot("in_progress"))

    def _close_item(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        at = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
            out = self._event(
                "response.output_text.done", **at, content_index=0, text=item.text, logprobs=[]
            )
            out += self._event("response.content_part.done", **at, content_index=0, part=part)
        else:
            out = self._event(
                "response.function_call_arguments.done", **at, name=item.name, arguments=item.text
            )
        return out + self._event(
            "response.output_item.done", output_index=item.index, item=item.done()
        )

    def _start(self, item: _Item) -> bytes:
        out = self._close_item()
        self._items.append(item)
        self._open = item
        if item.kind == "message":
            out += self._event(
                "response.output_item.added",
                output_index=item.index,
                item=_message_item(item.id, "", "in_progress"),
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event(
                "response.content_part.added",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                part=part,
            )
        else:
            out += self._event(
                "response.output_item.added",
                output_index=item.index,
                item=_call_item(item.id, item.call_id, item.name, "", "in_progress", item.spaces),
            )
        return out

    def _text(self, text: str) -> bytes:
        out = b""
        if self._open is None or self._open.kind != "message":
            out += self._start(_Item(len(self._items), _new_id("msg"), "message"))
        item = self._open
        assert item is not None
        item.text += text
        return out + self._event(
            "response.output_text.delta",
            item_id=item.id,
            output_index=item.index,
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _tool(self, delta: ToolCallDelta) -> bytes:
        out = b""
        item = self._open
        if item is None or item.kind != "function_call" or item.tool_index != delta.index:
            earlier = next(
                (
                    i
                    for i in self._items
                    if i.kind == "function_call" and i.tool_index == delta.index
                ),
                None,
            )
            if earlier is not None:
                # A late piece of a call already closed: keep it in the final response.
                earlier.text += delta.arguments
                return b""
            item = _Item(
                len(self._items),
                _new_id("fc"),
                "function_call",
                call_id=delta.id or _new_id("call"),
                name=delta.name or "",
                tool_index=delta.index,
                spaces=namespaces(self.asked.options.get("tools")),
            )
            out += self._start(item)
        elif delta.name and not item.name:
            item.name = delta.name
        if delta.arguments:
            item.text += delta.arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=item.id,
                output_index=item.index,
                delta=delta.arguments,
            )
        return out

    def chunk(self, chunk: Chunk) -> bytes:
        """Text and tool-call deltas as item events; thinking is not carried."""
        if chunk.model:
            self.model = chunk.model
        if chunk.finish_reason:
            self._finish = chunk.finish_reason
        out = b""
        if chunk.text:
            out += self._text(chunk.text)
        for delta in chunk.tool_calls:
            out += self._tool(delta)
        return out

    def close(self, trace: RequestTrace) -> bytes:
        """The last items' done events, then ``response.completed`` with the whole
        response (``response.incomplete`` when the answer hit its output cap)."""
        if trace.model:
            self.model = trace.model
        out = self._close_item()
        if self._finish == "length":
            response = self._snapshot("incomplete", trace.usage, incomplete=True)
            return out + self._event("response.incomplete", response=response)
        return out + self._event(
            "response.completed", response=self._snapshot("completed", trace.usage)
        )

    def fail(self, status: int, kind: ErrorKind, message: str) -> bytes:
        """``response.failed``: the response so far, status failed, with its error.

        The open item gets no done events: a client can act on a done item at once (a
        done ``function_call`` gets run), and this one was cut short."""
        code = "rate_limit_exceeded" if kind is ErrorKind.RATE_LIMIT else "server_error"
        response = self._snapshot("failed", error={"code": code, "message": message})
        return self._event("response.failed", response=response)


class ResponsesForm:
    """``POST /v1/responses`` (see the module docstring)."""

    name = "/v1/responses"

    def parse(self, body: Mapping[str, Any], headers: Mapping[str, str]) -> Asked:
        """The request in the engine's terms: Chat Completions messages and params."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("is required: the load balancer's name", field="model")
        if body.get("previous_response_id") is not None:
            raise InvalidRequestError(
                "is not supported", field="previous_response_id", hint=_STATELESS_HINT
            )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequestError("must be true or false", field="stream")
        dropped = _Dropped()
        messages = _messages(body, dropped)
        tools, echoed = _tools(body, dropped)
        params: dict[str, Any] = {}
        options: dict[str, Any] = {"tools": echoed}
        if tools:
            params["tools"] = tools
        if "tool_choice" in body:
            choice = _tool_choice(body["tool_choice"], dropped)
            if choice is not None:
                params["tool_choice"] = choice
                options["tool_choice"] = body["tool_choice"]
        cap = body.get("max_output_tokens")
        if cap is not None:
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise InvalidRequestError("must be a positive integer", field="max_output_tokens")
            params["max_tokens"] = cap
            options["max_output_tokens"] = cap
        reasoning = body.get("reasoning")
        if isinstance(reasoning, Mapping):
            options["reasoning"] = {
                "effort": reasoning.get("effort"),
                "summary": reasoning.get("summary"),
            }
            if reasoning.get("effort") is not None:
                params["reasoning_effort"] = reasoning["effort"]
        for key in _PASSED:
            if body.get(key) is not None:
                params[key] = body[key]
                options[key] = body[key]
        response_format = _response_format(body.get("text"))
        if response_format is not None:
            params["response_format"] = response_format
        for key in ("instructions", "metadata", "prompt_cache_key"):
            if body.get(key) is not None:
                options[key] = body[key]
        # Conversation keys (SPEC §3.5): a session header (Codex 0.171 sends ``session-id``)
        # wins over the body's ``prompt_cache_key``.
        affinity = session_key(headers)
        cache_key = body.get("prompt_cache_key")
        if affinity is None and isinstance(cache_key, str) and cache_key:
            affinity = cache_key
        return Asked(
            model=model,
            messages=messages,
            params=params,
            stream=stream,
            affinity_key=affinity,
            dropped=tuple(dropped.names),
            options=options,
        )

    def answer(self, asked: Asked, result: Result) -> dict[str, Any]:
        """A whole ``response`` object: a message item for the text, a function_call
        item per tool call."""
        output: list[dict[str, Any]] = []
        if result.text:
            output.append(_message_item(_new_id("msg"), result.text, "completed"))
        spaces = namespaces(asked.options.get("tools"))
        for call in result.tool_calls:
            function = call.get("function") or {}
            output.append(
                _call_item(
                    _new_id("fc"),
                    call.get("id") or _new_id("call"),
                    function.get("name") or "",
                    function.get("arguments") or "",
                    "completed",
                    spaces,
                )
            )
        incomplete = result.finish_reason == "length"
        return _response(
            asked,
            response_id=_new_id("resp"),
            created_at=int(time.time()),
            model=result.model or asked.model,
            status="incomplete" if incomplete else "completed",
            output=output,
            usage=result.usage,
            incomplete=incomplete,
        )

    def events(self, asked: Asked, model: str) -> ResponsesWriter:
        """The encoder of one streamed answer."""
        return ResponsesWriter(asked, model)

    def error(self, status: int, kind: ErrorKind, message: str) -> dict[str, Any]:
        """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return openai_error(status, kind, message)


FORM = ResponsesForm()
