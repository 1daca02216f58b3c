"""The Responses form as pure translation: request JSON → engine types, engine chunks →
events, each checked against the official openai SDK's pydantic models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from lbprovider.errors import InvalidRequestError
from lbprovider.gateway.forms import Asked, ErrorKind
from lbprovider.gateway.responses import FORM
from lbprovider.provider import Result
from lbprovider.routing import RequestTrace
from lbprovider.transport import Chunk, ToolCallDelta, Usage

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)

SHELL_TOOL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}},
        "required": ["command"],
    },
}

CODEX_BODY: dict[str, Any] = {
    "model": "coding",
    "instructions": "You are Codex.",
    "input": [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "<permissions>sandboxed</permissions>"}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "list files"}],
        },
    ],
    "tools": [SHELL_TOOL, {"type": "web_search", "external_web_access": False}],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "store": False,
    "stream": True,
    "include": ["reasoning.encrypted_content"],
    "prompt_cache_key": "conv-123",
    "text": {"verbosity": "low"},
}


def parse_events(raw: bytes) -> list[Any]:
    """SSE bytes → the SDK's typed events; each ``event:`` name matches its data's type."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(EVENTS.validate_python(data))
    return events


def stream(asked: Asked, chunks: list[Chunk], usage: Usage | None = None) -> list[Any]:
    """Run a writer over ``chunks`` and a clean close; the events, typed."""
    writer = FORM.events(asked, "sim/gpt-test")
    raw = writer.open() + b"".join(writer.chunk(c) for c in chunks)
    raw += writer.close(RequestTrace(model="sim/gpt-test", usage=usage))
    return parse_events(raw)


def plain(prompt: str = "hi", **extra: Any) -> Asked:
    """A parsed request with a string input."""
    return FORM.parse({"model": "coding", "input": prompt, **extra}, {})


def test_codex_request_becomes_engine_messages_and_params() -> None:
    """A Codex-shaped request: instructions and developer as system, hosted tool dropped."""
    asked = FORM.parse(CODEX_BODY, {})
    assert asked.messages == [
        {"role": "system", "content": "You are Codex."},
        {"role": "system", "content": "<permissions>sandboxed</permissions>"},
        {"role": "user", "content": "list files"},
    ]
    assert asked.params == {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "shell",
                    "description": "Runs a shell command",
                    "parameters": SHELL_TOOL["parameters"],
                    "strict": False,
                },
            }
        ],
        "tool_choice": "auto",
        "reasoning_effort": "medium",
        "parallel_tool_calls": False,
    }
    assert asked.dropped == ("web_search",)
    assert asked.affinity_key == "conv-123"
    assert asked.stream is True
    assert asked.wire is None


@pytest.mark.parametrize(
    "headers",
    [{"session_id": "s-1"}, {"session-id": "s-1"}, {"x-session-id": "s-1"}],
)
def test_session_header_wins_over_prompt_cache_key(headers: dict[str, str]) -> None:
    """An explicit session header is the affinity key, before ``prompt_cache_key``."""
    assert FORM.parse(CODEX_BODY, headers).affinity_key == "s-1"


def test_tool_round_trip_items_become_an_assistant_call_and_tool_messages() -> None:
    """function_call items merge into one assistant message; outputs become tool messages."""
    body = {
        "model": "coding",
        "input": [
            {"role": "user", "content": "what is in /tmp and /var?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Looking."}],
            },
            {
                "type": "function_call",
                "call_id": "call_a",
                "name": "shell",
                "arguments": '{"command":["ls","/tmp"]}',
            },
            {
                "type": "function_call",
                "call_id": "call_b",
                "name": "shell",
                "arguments": '{"command":["ls","/var"]}',
            },
            {"type": "function_call_output", "call_id": "call_a", "output": "a.txt"},
            {
                "type": "function_call_output",
                "call_id": "call_b",
                "output": [{"type": "input_text", "text": "log"}],
            },
            {"type": "reasoning", "id": "rs_2", "summary": []},
        ],
    }
    asked = FORM.parse(body, {})
    assert asked.messages == [
        {"role": "user", "content": "what is in /tmp and /var?"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command":["ls","/tmp"]}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command":["ls","/var"]}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_b", "content": "log"},
    ]
    assert asked.dropped == ("reasoning",)


def test_images_and_several_parts_stay_parts() -> None:
    """input_image becomes an image_url part; a message of several parts keeps them."""
    url = "data:image/png;base64,iVBORw0KGgo="
    body = {
        "model": "coding",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": url, "detail": "low"},
                ],
            }
        ],
    }
    assert FORM.parse(body, {}).messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
            ],
        }
    ]


def test_settings_map_to_chat_names_and_ignored_fields_are_not_sent() -> None:
    """max_output_tokens → max_tokens, a forced function → chat form; store/include/... unsent."""
    asked = plain(
        max_output_tokens=256,
        temperature=0.2,
        top_p=0.9,
        tool_choice={"type": "function", "name": "shell"},
        tools=[
            SHELL_TOOL,
            {"type": "code_interpreter", "container": {"type": "auto"}},
            {"type": "image_generation"},
        ],
        store=True,
        include=["file_search_call.results"],
        metadata={"k": "v"},
        truncation="auto",
        user="u",
        service_tier="flex",
        text={
            "format": {
                "type": "json_schema",
                "name": "out",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
    )
    assert asked.params["max_tokens"] == 256
    assert asked.params["tool_choice"] == {"type": "function", "function": {"name": "shell"}}
    assert asked.params["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert set(asked.params) == {
        "max_tokens",
        "temperature",
        "top_p",
        "tool_choice",
        "tools",
        "response_format",
    }
    assert asked.dropped == ("code_interpreter", "image_generation")
    assert asked.stream is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"model": "coding", "input": "hi", "previous_response_id": "resp_1"},
            "previous_response_id",
        ),
        ({"input": "hi"}, "model"),
        ({"model": "coding"}, "input"),
        ({"model": "coding", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].id"),
        ({"model": "coding", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": "coding", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        (
            {
                "model": "coding",
                "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}],
            },
            "input[0].content[0].image_url",
        ),
    ],
)
def test_requests_the_form_cannot_take_are_refused_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    """A request this stateless server cannot take names its field."""
    with pytest.raises(InvalidRequestError) as caught:
        FORM.parse(body, {})
    assert caught.value.field == field


def test_previous_response_id_says_to_send_the_whole_input() -> None:
    """The refusal tells the client what to do instead."""
    with pytest.raises(InvalidRequestError, match="send the whole conversation"):
        FORM.parse({"model": "coding", "input": "hi", "previous_response_id": "resp_1"}, {})


def test_non_streaming_answer_validates_as_an_sdk_response() -> None:
    """Text and tool calls become message and function_call items; usage maps over."""
    asked = FORM.parse({**CODEX_BODY, "stream": False}, {})
    result = Result(
        text="Listing.",
        backend="primary",
        model="sim/gpt-test",
        usage=Usage(prompt_tokens=120, completion_tokens=8, cache_read_tokens=100),
        finish_reason="tool_calls",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "shell", "arguments": '{"command":["ls"]}'},
            }
        ],
    )
    response = Response.model_validate(FORM.answer(asked, result))
    assert response.status == "completed"
    assert response.model == "sim/gpt-test"
    assert response.output_text == "Listing."
    message, call = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == ("call_1", "shell", '{"command":["ls"]}')
    assert call.id is not None and call.id.startswith("fc_")
    assert response.id.startswith("resp_")
    assert response.usage is not None
    assert (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.total_tokens,
    ) == (120, 8, 128)
    assert response.usage.input_tokens_details.cached_tokens == 100
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert [t.type for t in response.tools] == ["function"]
    assert response.parallel_tool_calls is False


def test_answer_cut_at_the_cap_is_incomplete() -> None:
    """finish_reason length → status incomplete, reason max_output_tokens."""
    result = Result(text="partial", backend="b", model="sim/m", usage=None, finish_reason="length")
    response = Response.model_validate(FORM.answer(plain(max_output_tokens=5), result))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_text_stream_is_the_documented_event_sequence() -> None:
    """Text deltas: created, in_progress, item/part added, deltas, done events, completed."""
    events = stream(
        plain(),
        [Chunk(text="Hel", model="sim/gpt-test"), Chunk(text="lo"), Chunk(finish_reason="stop")],
        Usage(prompt_tokens=5, completion_tokens=2, cache_read_tokens=3),
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    item_id = events[2].item.id
    assert {e.item_id for e in events[3:8]} == {item_id}
    assert events[6].text == "Hello"
    done = events[-1].response
    assert done.status == "completed" and done.id == events[0].response.id
    assert done.output_text == "Hello" and done.output[0].id == item_id
    assert done.model == "sim/gpt-test"
    assert done.usage is not None and done.usage.input_tokens_details.cached_tokens == 3


def test_text_then_tool_calls_stream_as_consistent_items() -> None:
    """A message then two calls: three items, indexes 0..2, ids and arguments consistent."""
    chunks = [
        Chunk(text="Let me look."),
        Chunk(tool_calls=(ToolCallDelta(0, id="call_a", name="shell"),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='{"command":'),)),
        Chunk(tool_calls=(ToolCallDelta(0, arguments='["ls"]}'),)),
        Chunk(tool_calls=(ToolCallDelta(1, id="call_b", name="shell", arguments="{}"),)),
        Chunk(finish_reason="tool_calls"),
    ]
    events = stream(plain(), chunks, Usage(10, 4))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [e.output_index for e in added] == [0, 1, 2]
    first_call = added[1].item
    assert (first_call.type, first_call.call_id, first_call.name, first_call.arguments) == (
        "function_call",
        "call_a",
        "shell",
        "",
    )
    args_done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.item_id, e.output_index, e.arguments) for e in args_done] == [
        (first_call.id, 1, '{"command":["ls"]}'),
        (added[2].item.id, 2, "{}"),
    ]
    final = events[-1].response
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    assert [o.id for o in final.output] == [e.item.id for e in added]
    assert final.output[2].call_id == "call_b"


def test_thinking_is_not_carried() -> None:
    """Thinking chunks make no events; the text after them does."""
    events = stream(plain(), [Chunk(thinking="hmm"), Chunk(signature="sig"), Chunk(text="ok")])
    assert [e.type for e in events].count("response.output_text.delta") == 1
    assert events[-1].response.output_text == "ok"


def test_cap_reached_in_a_stream_ends_incomplete() -> None:
    """A length finish closes with response.incomplete, status incomplete."""
    events = stream(plain(), [Chunk(text="par"), Chunk(finish_reason="length")])
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_interrupted_stream_ends_with_response_failed() -> None:
    """fail() sends response.failed with the error; the cut item is never "done"."""
    writer = FORM.events(plain(), "sim/gpt-test")
    raw = writer.open() + writer.chunk(Chunk(text="par"))
    raw += writer.fail(503, ErrorKind.OVERLOADED, "every member failed")
    events = parse_events(raw)
    assert events[-1].type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    response = events[-1].response
    assert response.status == "failed"
    assert response.error is not None
    assert (response.error.code, response.error.message) == ("server_error", "every member failed")
    kinds = [e.type for e in events]
    assert "response.completed" not in kinds and "response.output_item.done" not in kinds
    assert response.output[0].status == "incomplete"


@pytest.mark.parametrize(
    ("kind", "type_", "code"),
    [
        (ErrorKind.INVALID_REQUEST, "invalid_request_error", None),
        (ErrorKind.AUTHENTICATION, "authentication_error", "invalid_api_key"),
        (ErrorKind.NOT_FOUND, "not_found_error", None),
        (ErrorKind.UNKNOWN_MODEL, "not_found_error", "model_not_found"),
        (ErrorKind.RATE_LIMIT, "rate_limit_error", "rate_limit_exceeded"),
        (ErrorKind.OVERLOADED, "server_error", "service_unavailable"),
    ],
)
def test_error_body_is_openais_form(kind: ErrorKind, type_: str, code: str | None) -> None:
    """{"error": {"message", "type", "param", "code"}}."""
    assert FORM.error(400, kind, "why") == {
        "error": {"message": "why", "type": type_, "param": None, "code": code}
    }


def test_namespace_tools_round_trip() -> None:
    """Codex's namespace tools reach chat members as NAMESPACE__NAME functions; a call
    back names the namespace again, and a namespaced call in the history is qualified."""
    body = {
        "model": "coding",
        "input": [
            {"type": "message", "role": "user", "content": "spawn"},
            {
                "type": "function_call",
                "call_id": "c1",
                "namespace": "multi_agent_v1",
                "name": "close_agent",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "closed"},
        ],
        "tools": [
            {
                "type": "namespace",
                "name": "multi_agent_v1",
                "description": "sub-agents",
                "tools": [
                    {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}
                ],
            },
            {"type": "function", "name": "shell", "parameters": {"type": "object"}},
        ],
    }
    asked = FORM.parse(body, {})
    names = [t["function"]["name"] for t in asked.params["tools"]]
    assert names == ["multi_agent_v1__close_agent", "shell"]
    assert "namespace" not in asked.dropped
    history_call = asked.messages[1]["tool_calls"][0]["function"]["name"]
    assert history_call == "multi_agent_v1__close_agent"
    result = Result(
        text="",
        backend="a",
        model="openai/m",
        usage=Usage(1, 1),
        finish_reason="tool_calls",
        tool_calls=[
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "multi_agent_v1__close_agent", "arguments": "{}"},
            }
        ],
    )
    item = FORM.answer(asked, result)["output"][0]
    assert (item["namespace"], item["name"]) == ("multi_agent_v1", "close_agent")
    writer = FORM.events(asked, "openai/m")
    raw = writer.open() + writer.chunk(
        Chunk(
            tool_calls=(ToolCallDelta(0, "c3", "multi_agent_v1__close_agent", "{}"),),
            finish_reason="tool_calls",
        )
    )
    raw += writer.close(RequestTrace(usage=Usage(1, 1)))
    done = [
        json.loads(line[5:])
        for line in raw.decode().splitlines()
        if line.startswith("data:") and "response.output_item.done" in line
    ]
    assert (done[0]["item"]["namespace"], done[0]["item"]["name"]) == (
        "multi_agent_v1",
        "close_agent",
    )
