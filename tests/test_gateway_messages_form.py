"""The Anthropic Messages form, as pure translation (SPEC §11.3, §4.2)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from lbprovider.errors import InvalidRequestError
from lbprovider.gateway.forms import ErrorKind
from lbprovider.gateway.messages import FORM, MessagesWriter, count_tokens
from lbprovider.provider import Result
from lbprovider.routing import RequestTrace
from lbprovider.transport import Api, Chunk, ToolCallDelta, Usage
from lbprovider.window import estimate_tokens

MODEL = "anthropic/claude-sim"
PNG = "iVBORw0KGgo="


def body(**fields: Any) -> dict[str, Any]:
    """A minimal valid request, with ``fields`` on top."""
    base: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "hi"}],
    }
    base.update(fields)
    return base


def parse(headers: dict[str, str] | None = None, **fields: Any) -> Any:
    """``FORM.parse`` of ``body(**fields)``."""
    return FORM.parse(body(**fields), headers or {})


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Server-sent events back as (event name, data), checking the name matches ``type``."""
    out: list[tuple[str, dict[str, Any]]] = []
    for raw in data.decode().split("\n\n"):
        if not raw.strip():
            continue
        lines = dict(line.split(": ", 1) for line in raw.split("\n"))
        payload = json.loads(lines["data"])
        assert payload["type"] == lines["event"]
        out.append((lines["event"], payload))
    return out


def names(data: bytes) -> list[str]:
    """Event names, with the delta type after content_block_delta."""
    out = []
    for name, payload in events_of(data):
        if name == "content_block_delta":
            name = f"{name}:{payload['delta']['type']}@{payload['index']}"
        elif name in ("content_block_start", "content_block_stop"):
            name = f"{name}@{payload['index']}"
        out.append(name)
    return out


def sdk_message(data: bytes) -> anthropic.types.Message:
    """What the official SDK's stream accumulator makes of the events (it raises on a bad
    order), validated as a Message."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for _, payload in events_of(data):
        snapshot = accumulate_event(event=payload, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    assert snapshot is not None
    return anthropic.types.Message.model_validate(snapshot.model_dump())


def run(writer: MessagesWriter, chunks: list[Chunk], usage: Usage | None = None) -> bytes:
    """The bytes of open, every chunk, close."""
    out = writer.open() + b"".join(writer.chunk(c) for c in chunks)
    return out + writer.close(RequestTrace(usage=usage))


# --- parse ------------------------------------------------------------------------------


def test_system_string_becomes_a_system_message() -> None:
    """A string ``system`` is the first, system, message."""
    asked = parse(system="be brief")
    assert asked.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_system_blocks_keep_cache_control() -> None:
    """System text blocks become text parts, each with its own ``cache_control``."""
    mark = {"type": "ephemeral"}
    asked = parse(
        system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B", "cache_control": mark}]
    )
    assert asked.messages[0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "A"},
            {"type": "text", "text": "B", "cache_control": mark},
        ],
    }


def test_images_become_image_url_parts() -> None:
    """Base64 sources become data URLs; URL sources keep their URL; text keeps its marker."""
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
        {"type": "text", "text": "what is it?", "cache_control": {"type": "ephemeral"}},
    ]
    asked = parse(messages=[{"role": "user", "content": content}])
    assert asked.messages == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                {"type": "text", "text": "what is it?", "cache_control": {"type": "ephemeral"}},
            ],
        }
    ]


def test_tool_use_and_tool_result_round_trip() -> None:
    """Assistant ``tool_use`` → ``tool_calls``; ``tool_result`` → ``tool`` messages before
    the rest of that user turn (errors said in the text, images moved to the turn)."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    messages = [
        {"role": "user", "content": "read both"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}},
                {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "no such file",
                    "is_error": True,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "here"}, image],
                },
                {"type": "text", "text": "go on"},
            ],
        },
    ]
    asked = parse(messages=messages)
    assert asked.messages[1:] == [
        {
            "role": "assistant",
            "content": "Reading.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path": "a"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "shot", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no such file"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "here"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "text", "text": "go on"},
            ],
        },
    ]


def test_tool_only_assistant_turn_has_null_content() -> None:
    """An assistant turn of tool calls only has ``content: None``, as OpenAI expects."""
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
    ]
    asked = parse(messages=messages)
    assert asked.messages[1]["content"] is None
    assert asked.messages[2:] == [{"role": "tool", "tool_call_id": "t", "content": ""}]


def test_thinking_blocks_are_dropped_and_named_once() -> None:
    """``thinking`` and ``redacted_thinking`` blocks never reach a translated member."""
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "answer"},
            ],
        },
        {"role": "user", "content": "y"},
    ]
    asked = parse(messages=messages)
    assert asked.messages[1] == {"role": "assistant", "content": "answer"}
    assert asked.dropped == ("thinking",)


def test_tools_translate_and_hosted_tools_are_dropped() -> None:
    """Tools with an ``input_schema`` become function tools; hosted tools are named in dropped."""
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    asked = parse(
        tools=[
            {
                "name": "grep",
                "description": "search",
                "input_schema": schema,
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            {"type": "bash_20250124", "name": "bash"},
        ]
    )
    assert asked.params["tools"] == [
        {
            "type": "function",
            "function": {"name": "grep", "parameters": schema, "description": "search"},
        }
    ]
    assert asked.dropped == ("web_search_20250305", "bash_20250124")


def test_only_hosted_tools_leave_no_tools_and_no_tool_choice() -> None:
    """When every tool is hosted, the engine gets neither ``tools`` nor ``tool_choice``."""
    asked = parse(
        tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "any"}
    )
    assert "tools" not in asked.params and "tool_choice" not in asked.params


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "grep"}, {"type": "function", "function": {"name": "grep"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    """Anthropic's ``tool_choice`` in OpenAI words."""
    tools = [{"name": "grep", "input_schema": {"type": "object"}}]
    assert parse(tools=tools, tool_choice=choice).params["tool_choice"] == expected


def test_disable_parallel_tool_use() -> None:
    """``disable_parallel_tool_use`` becomes ``parallel_tool_calls: false``."""
    tools = [{"name": "grep", "input_schema": {"type": "object"}}]
    asked = parse(tools=tools, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert asked.params["parallel_tool_calls"] is False


def test_params_and_wire() -> None:
    """Sampling fields pass, Anthropic-only ones stay in the wire body, beta headers ride along."""
    sent = body(
        stop_sequences=["END"],
        temperature=0.3,
        top_p=0.9,
        top_k=5,
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "u-1"},
        service_tier="auto",
        stream=True,
    )
    headers = {
        "Anthropic-Beta": "prompt-caching-2024-07-31",
        "anthropic-version": "2023-06-01",
        "x-other": "1",
    }
    asked = FORM.parse(sent, headers)
    assert asked.params == {"max_tokens": 256, "temperature": 0.3, "top_p": 0.9, "stop": ["END"]}
    assert asked.stream is True and asked.model == "claude-sonnet-4-5"
    assert asked.wire is not None and asked.wire.api is Api.ANTHROPIC_MESSAGES
    assert asked.wire.body == sent
    assert asked.wire.headers == {
        "anthropic-beta": "prompt-caching-2024-07-31",
        "anthropic-version": "2023-06-01",
    }


def test_stream_defaults_to_false() -> None:
    """Without ``stream`` the caller is a non-streaming one."""
    assert parse().stream is False


@pytest.mark.parametrize(
    ("headers", "metadata", "key"),
    [
        ({"X-Claude-Code-Session-Id": "s-1", "x-session-id": "s-2"}, {"user_id": "u"}, "s-1"),
        ({"x-session-id": "s-2"}, {"user_id": "u"}, "s-2"),
        ({}, {"user_id": "u"}, "u"),
        ({}, None, None),
    ],
)
def test_affinity_key(headers: dict[str, str], metadata: Any, key: str | None) -> None:
    """The session header wins, then ``metadata.user_id``."""
    fields = {"metadata": metadata} if metadata is not None else {}
    assert parse(headers, **fields).affinity_key == key


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user"},
                ]
            },
            "messages[2].content",
        ),
        ({"messages": [{"role": "tool", "content": "a"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"text": "a"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}],
                    }
                ]
            },
            "messages[0].content[0].source.media_type",
        ),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"tools": [{"input_schema": {}}]}, "tools[0].name"),
        (
            {"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool"}},
            "tool_choice.name",
        ),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_name_the_field(change: dict[str, Any], field: str) -> None:
    """A request the form cannot take raises InvalidRequestError naming the field."""
    sent = body()
    for key, value in change.items():
        if value is None:
            sent.pop(key)
        else:
            sent[key] = value
    with pytest.raises(InvalidRequestError) as caught:
        FORM.parse(sent, {})
    assert caught.value.field == field


# --- answer -----------------------------------------------------------------------------


def test_answer_translated() -> None:
    """Thinking (with its signature), text, then tool_use blocks; usage with cache fields."""
    result = Result(
        text="Let me look.",
        backend="b",
        model=MODEL,
        usage=Usage(
            prompt_tokens=100, completion_tokens=7, cache_read_tokens=60, cache_write_tokens=30
        ),
        finish_reason="tool_calls",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read", "arguments": '{"path": "a"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "bad", "arguments": "{not json"},
            },
        ],
        thinking="hmm",
        signature="sig",
    )
    out = FORM.answer(parse(), result)
    message = anthropic.types.Message.model_validate(out)
    assert message.model == MODEL and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert out["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    assert out["content"][2] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "read",
        "input": {"path": "a"},
    }
    assert out["content"][3]["input"] == {}
    assert out["stop_reason"] == "tool_use" and out["stop_sequence"] is None
    assert out["usage"] == {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 30,
    }


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_answer_stop_reason(finish: str | None, reason: str) -> None:
    """OpenAI finish reasons in Anthropic's words."""
    result = Result(text="x", backend="b", model=MODEL, usage=None, finish_reason=finish)
    assert FORM.answer(parse(), result)["stop_reason"] == reason


def passthrough_events(model: str = "claude-real-name") -> list[dict[str, Any]]:
    """What an Anthropic member streams: a cited text block and a tool_use block."""
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_member",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 40},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {
                "type": "citations_delta",
                "citation": {
                    "type": "char_location",
                    "cited_text": "Hi",
                    "document_index": 0,
                    "document_title": "d",
                    "start_char_index": 0,
                    "end_char_index": 2,
                },
            },
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_member",
                "name": "read",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"pa'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'th": "a"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]


def test_answer_from_passthrough_events() -> None:
    """A pass-through member's events make the answer as it sent it, ``model`` rewritten."""
    result = Result(text="Hi", backend="b", model=MODEL, usage=None, wire=passthrough_events())
    out = FORM.answer(parse(), result)
    message = anthropic.types.Message.model_validate(out)
    assert out["id"] == "msg_member" and out["model"] == MODEL
    assert (
        out["content"][0]["text"] == "Hi"
        and out["content"][0]["citations"][0]["cited_text"] == "Hi"
    )
    assert out["content"][1] == {
        "type": "tool_use",
        "id": "toolu_member",
        "name": "read",
        "input": {"path": "a"},
    }
    assert message.stop_reason == "tool_use"
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 9, "cache_read_input_tokens": 40}


@pytest.mark.parametrize(
    ("kind", "kind_type"),
    [
        (ErrorKind.INVALID_REQUEST, "invalid_request_error"),
        (ErrorKind.AUTHENTICATION, "authentication_error"),
        (ErrorKind.PERMISSION, "permission_error"),
        (ErrorKind.NOT_FOUND, "not_found_error"),
        (ErrorKind.TOO_LARGE, "request_too_large"),
        (ErrorKind.RATE_LIMIT, "rate_limit_error"),
        (ErrorKind.OVERLOADED, "overloaded_error"),
        (ErrorKind.API_ERROR, "api_error"),
    ],
)
def test_error_body(kind: ErrorKind, kind_type: str) -> None:
    """Anthropic's error shape, with its type for each kind."""
    assert FORM.error(400, kind, "why") == {
        "type": "error",
        "error": {"type": kind_type, "message": "why"},
    }


# --- events -----------------------------------------------------------------------------


def test_text_stream_sequence() -> None:
    """Text chunks: one text block between message_start and message_delta/message_stop."""
    writer = FORM.events(parse(), MODEL)
    usage = Usage(prompt_tokens=50, completion_tokens=3, cache_read_tokens=20, cache_write_tokens=5)
    data = run(
        writer,
        [
            Chunk(text="Hel", model=MODEL),
            Chunk(text="lo"),
            Chunk(finish_reason="stop", usage=usage),
        ],
        usage,
    )
    assert names(data) == [
        "message_start",
        "content_block_start@0",
        "content_block_delta:text_delta@0",
        "content_block_delta:text_delta@0",
        "content_block_stop@0",
        "message_delta",
        "message_stop",
    ]
    events = dict(events_of(data))
    assert events["message_start"]["message"]["model"] == MODEL
    assert events["message_delta"]["delta"]["stop_reason"] == "end_turn"
    assert events["message_delta"]["usage"] == {
        "input_tokens": 25,
        "output_tokens": 3,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 5,
    }
    message = sdk_message(data)
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert message.usage.cache_read_input_tokens == 20 and message.usage.input_tokens == 25


def test_thinking_text_and_tools_sequence() -> None:
    """Blocks open and close as the chunk kinds change; each tool-call index opens its own."""
    chunks = [
        Chunk(thinking="let me "),
        Chunk(thinking="think"),
        Chunk(signature="sig=="),
        Chunk(text="Reading both."),
        Chunk(tool_calls=(ToolCallDelta(0, id="call_a", name="read", arguments='{"path":'),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments=' "a"}'),)),
        Chunk(tool_calls=(ToolCallDelta(1, id="call_b", name="read", arguments='{"path": "b"}'),)),
        Chunk(finish_reason="tool_calls"),
    ]
    data = run(FORM.events(parse(), MODEL), chunks)
    assert names(data) == [
        "message_start",
        "content_block_start@0",
        "content_block_delta:thinking_delta@0",
        "content_block_delta:thinking_delta@0",
        "content_block_delta:signature_delta@0",
        "content_block_stop@0",
        "content_block_start@1",
        "content_block_delta:text_delta@1",
        "content_block_stop@1",
        "content_block_start@2",
        "content_block_delta:input_json_delta@2",
        "content_block_delta:input_json_delta@2",
        "content_block_stop@2",
        "content_block_start@3",
        "content_block_delta:input_json_delta@3",
        "content_block_stop@3",
        "message_delta",
        "message_stop",
    ]
    message = sdk_message(data)
    thinking, text, first, second = message.content
    assert (
        thinking.type == "thinking"
        and thinking.thinking == "let me think"
        and thinking.signature == "sig=="
    )
    assert text.type == "text" and text.text == "Reading both."
    assert first.type == "tool_use" and (first.id, first.name, first.input) == (
        "call_a",
        "read",
        {"path": "a"},
    )
    assert second.type == "tool_use" and second.input == {"path": "b"}
    assert message.stop_reason == "tool_use"


def test_passthrough_events_are_sent_as_they_came() -> None:
    """A member's own events go out unchanged but for ``model``; nothing is doubled."""
    sent = passthrough_events()
    chunks = [
        Chunk(text="Hi", model=MODEL, wire=tuple(sent[:4])),
        Chunk(wire=tuple(sent[4:9])),
        Chunk(finish_reason="tool_calls", wire=tuple(sent[9:])),
    ]
    data = run(FORM.events(parse(), MODEL), chunks, Usage(prompt_tokens=52, completion_tokens=9))
    got = events_of(data)
    expected = [dict(e) for e in sent]
    expected[0] = {**sent[0], "message": {**sent[0]["message"], "model": MODEL}}
    assert [payload for _, payload in got] == expected
    assert sdk_message(data).model == MODEL


def test_passthrough_then_translated_continuation_in_the_open_block() -> None:
    """A pass-through stream cut inside its text block, continued by a translated member:
    the text block goes on, then one stop, one message_delta, one message_stop."""
    sent = passthrough_events()
    chunks = [
        Chunk(text="Hi", model=MODEL, wire=tuple(sent[:4])),
        Chunk(text=" there", model="openai/gpt-sim"),
        Chunk(finish_reason="stop"),
    ]
    usage = Usage(prompt_tokens=80, completion_tokens=5)
    data = run(FORM.events(parse(), MODEL), chunks, usage)
    assert names(data) == [
        "message_start",
        "content_block_start@0",
        "ping",
        "content_block_delta:text_delta@0",
        "content_block_delta:text_delta@0",
        "content_block_stop@0",
        "message_delta",
        "message_stop",
    ]
    message = sdk_message(data)
    assert message.content[0].type == "text" and message.content[0].text == "Hi there"
    assert message.usage.input_tokens == 80 and message.usage.output_tokens == 5


def test_passthrough_then_translated_continuation_after_a_closed_block() -> None:
    """After a pass-through block closed, a translated continuation opens the next index."""
    sent = passthrough_events()
    chunks = [
        Chunk(text="Hi", model=MODEL, wire=tuple(sent[:6])),
        Chunk(text="More"),
        Chunk(finish_reason="stop"),
    ]
    data = run(FORM.events(parse(), MODEL), chunks)
    assert names(data) == [
        "message_start",
        "content_block_start@0",
        "ping",
        "content_block_delta:text_delta@0",
        "content_block_delta:citations_delta@0",
        "content_block_stop@0",
        "content_block_start@1",
        "content_block_delta:text_delta@1",
        "content_block_stop@1",
        "message_delta",
        "message_stop",
    ]
    assert [b.type for b in sdk_message(data).content] == ["text", "text"]


def test_translated_then_passthrough_shifts_indexes() -> None:
    """A pass-through part after translated blocks keeps the indexes increasing, and its
    message_start is not sent twice."""
    sent = passthrough_events()
    writer = FORM.events(parse(), MODEL)
    data = (
        writer.open()
        + writer.chunk(Chunk(text="A"))
        + writer.chunk(Chunk(text="Hi", wire=tuple(sent)))
    )
    data += writer.close(RequestTrace())
    got = names(data)
    assert got.count("message_start") == 1 and got.count("message_stop") == 1
    assert "content_block_start@1" in got and "content_block_start@2" in got
    assert [b.type for b in sdk_message(data).content] == ["text", "text", "tool_use"]


def test_fail_is_an_overloaded_error_event() -> None:
    """A stream nobody could continue ends with ``event: error``, never message_stop."""
    writer = FORM.events(parse(), MODEL)
    data = writer.open() + writer.chunk(Chunk(text="par"))
    data += writer.fail(503, ErrorKind.OVERLOADED, "every member failed")
    got = events_of(data)
    assert got[-1] == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "every member failed"}},
    )
    assert "message_stop" not in [n for n, _ in got]
    assert writer.close(RequestTrace()) == b""


def test_message_start_carries_known_input_tokens() -> None:
    """Input tokens known on the first chunk are in message_start's usage."""
    writer = FORM.events(parse(), MODEL)
    data = writer.chunk(Chunk(text="x", usage=Usage(prompt_tokens=9)))
    start = events_of(data)[0][1]
    assert start["message"]["usage"] == {"input_tokens": 9, "output_tokens": 0}


# --- count_tokens -----------------------------------------------------------------------


def test_count_tokens_is_the_tpm_estimate() -> None:
    """``input_tokens`` is the window's estimate over messages, system and tools."""
    tools = [{"name": "grep", "input_schema": {"type": "object"}}]
    sent = {
        "model": "m",
        "system": "s" * 40,
        "messages": [{"role": "user", "content": "u" * 80}],
        "tools": tools,
    }
    expected = estimate_tokens(
        [{"content": "s" * 40}, {"content": "u" * 80}, {"content": json.dumps(tools)}], ""
    )
    assert count_tokens(sent) == {"input_tokens": expected}
    assert count_tokens({"model": "m", "messages": [{"role": "user", "content": "u" * 80}]}) == {
        "input_tokens": 20
    }


@pytest.mark.parametrize(
    ("sent", "field"),
    [({"messages": [{"role": "user", "content": "x"}]}, "model"), ({"model": "m"}, "messages")],
)
def test_count_tokens_requires_model_and_messages(sent: dict[str, Any], field: str) -> None:
    """count_tokens names a missing required field (max_tokens is not one)."""
    with pytest.raises(InvalidRequestError) as caught:
        count_tokens(sent)
    assert caught.value.field == field


def test_mid_conversation_system_message() -> None:
    """A system message inside `messages` (Claude Code sends them to newer models) stays a
    system message at its place for chat members, and reaches Anthropic members as sent."""
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "system",
                "content": [
                    {
                        "type": "text",
                        "text": "# Environment",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
            },
        ],
    }
    asked = FORM.parse(body, {})
    assert asked.messages == [
        {"role": "user", "content": "hi"},
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}
            ],
        },
    ]
    assert asked.wire is not None and asked.wire.body == body
