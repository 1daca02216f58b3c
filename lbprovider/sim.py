"""Simulated OpenAI-compatible and Anthropic backends on loopback, for tests, the demo
and benchmarks.

One :class:`SimServer` is one backend: ``POST /v1/chat/completions`` answering in
the real OpenAI formats (SSE ``chat.completion.chunk`` events ending in ``[DONE]``,
a usage chunk when ``stream_options.include_usage`` is set, or one JSON object), and
``POST /v1/messages`` in the Anthropic Messages formats (``message_start``, content
blocks with their deltas, ``ping``, ``message_delta``, ``message_stop``; errors as
``{"type": "error", "error": {...}}``), with an injectable :class:`Behavior`: errors
with optional ``Retry-After``, stalls before the headers or before the first content
chunk, dropped connections, slow chunks, seeded flakiness, malformed SSE, tool calls,
thinking and cache tokens.  It only binds 127.0.0.1.

    async with serve("status=503,retry_after=1") as backend:
        ...  # backend.url is the api_base; backend.hits counts requests
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import json
import random
import socket
import struct
import time
import typing
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Behavior", "SimServer", "run_forever", "serve", "serve_in_thread"]

HOST = "127.0.0.1"
_MAX_RECORDED = 200


@dataclass
class Behavior:
    """What a simulated backend does with each request (fields combine).

    Written on the command line as comma-separated ``key=value`` pairs, a bare key
    meaning true: ``status=429,retry_after=2``, ``flaky=0.5,seed=7``, ``malformed``.
    """

    status: int | None = None  # answer every request with this HTTP status
    retry_after: float | None = None  # Retry-After header (seconds) on error answers
    retry_after_date: float | None = None  # Retry-After as an HTTP date this many s ahead
    retry_after_ms: float | None = None  # retry-after-ms header on error answers
    echo_key: bool = False  # error messages quote the key received (as some providers do)
    error_code: str | None = None  # OpenAI error "code", e.g. context_length_exceeded
    error_message: str | None = None
    stall_headers: float = 0.0  # seconds before the response headers
    stall_first_chunk: float = 0.0  # seconds after the role chunk, before any content
    drop_after: int | None = None  # cut the connection after this many content chunks
    reset_after: int | None = None  # reset the connection (RST) after this many chunks
    stall_after: int | None = None  # go silent (30 s) after this many content chunks
    chunk_delay: float = 0.0  # seconds between content chunks
    flaky: float = 0.0  # probability that a request fails with fail_status
    seed: int = 0
    fail_first: int = 0  # the first N requests fail with fail_status
    fail_status: int = 503
    malformed: bool = False  # send a broken SSE event after the role chunk
    all_malformed: bool = False  # a 200 stream of only broken events, then [DONE]
    html: bool = False  # answer 200 with an HTML page (a captive portal, a wrong base URL)
    not_completion: bool = False  # answer 200 with a JSON object that is no chat completion
    reset: bool = False  # drop the connection before answering (a reset)
    no_done: bool = False  # end after the finish_reason without "data: [DONE]"
    no_finish: bool = False  # end cleanly with neither a finish_reason nor [DONE]
    ignore_stream: bool = False  # answer a streaming request with one JSON object
    stream_error_after: int | None = None  # after N content chunks, an error event (200)
    chunks: int = 5
    text: str = "Hello from the simulated backend."
    prompt_tokens: int = 12
    completion_tokens: int | None = None  # default: one per content chunk
    no_usage: bool = False  # never report usage (as some backends do)
    cached_tokens: int = 0  # this many of prompt_tokens were read from the cache (both APIs)
    tool_call: bool = False  # answer with a call to the request's first tool
    thinking: str = ""  # Anthropic: a thinking block (and its signature) before the text
    cache_read: int = 0  # Anthropic: cache_read_input_tokens reported
    cache_write: int = 0  # Anthropic: cache_creation_input_tokens reported
    # A trailing assistant message that is a prefix of `text` is continued: only the
    # rest is sent (what a member with `continuation: prefill` does).
    model: str | None = None  # model name reported back (default: the requested one)

    def __str__(self) -> str:
        """The behaviour as ``key=value`` text: only what differs from the defaults."""
        default = Behavior()
        changed = [
            f.name if value is True else f"{f.name}={value}"
            for f in dataclasses.fields(self)
            if (value := getattr(self, f.name)) != getattr(default, f.name)
        ]
        return ",".join(changed) or "ok"

    @classmethod
    def parse(cls, spec: str | Behavior | None) -> Behavior:
        """Parse ``key=value,flag`` text (``ok`` or empty means the defaults)."""
        if isinstance(spec, Behavior):
            return spec
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in (spec or "").split(","):
            item = item.strip()
            if not item or item == "ok":
                continue
            key, sep, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if key not in hints:
                names = ", ".join(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"unknown sim behaviour {key!r}; known: {names}")
            values[key] = _convert(hints[key], raw.strip() if sep else None, key)
        return cls(**values)


def _convert(hint: Any, raw: str | None, key: str) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    target = args[0]
    if raw is None:
        if target is bool:
            return True
        raise ValueError(f"sim behaviour {key!r} needs a value ({key}=...)")
    try:
        if target is bool:
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        return target(raw)
    except ValueError:
        raise ValueError(f"sim behaviour {key}={raw!r}: expected {target.__name__}") from None


@dataclass
class _Counters:
    hits: int = 0  # chat-completion requests received
    completed: int = 0  # answers sent to the end (success or error)
    disconnects: int = 0  # the client went away before the answer ended
    requests: list[dict[str, Any]] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    peers: list[tuple[str, int] | None] = field(default_factory=list)


class SimServer:
    """One simulated backend on ``127.0.0.1``; an async context manager.

    ``behavior`` may be replaced between requests.  Counters (``hits``,
    ``disconnects``, ``requests``) let tests observe what reached the backend.
    """

    def __init__(self, behavior: Behavior | str | None = None, *, port: int = 0) -> None:
        self.behavior = Behavior.parse(behavior)
        self._port = port
        self._runner: web.AppRunner | None = None
        self._rng = random.Random(self.behavior.seed)
        self._c = _Counters()
        self._changed = asyncio.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> SimServer:
        """Bind 127.0.0.1 and start serving."""
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/chat/completions", self._handle)
        app.router.add_post("/v1/messages", self._handle_messages)
        app.router.add_post("/messages", self._handle_messages)
        app.router.add_get("/sim/stats", self._stats)
        # Cancel a handler when its client goes away: a stalled backend must notice
        # that the caller gave up (tests assert the upstream was closed).
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self._port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self._port = server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- observation ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port."""
        return self._port

    @property
    def url(self) -> str:
        """The ``api_base`` to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://{HOST}:{self._port}/v1"

    @property
    def hits(self) -> int:
        """Chat-completion requests received so far."""
        return self._c.hits

    @property
    def disconnects(self) -> int:
        """Requests whose client closed the connection before the answer ended."""
        return self._c.disconnects

    @property
    def completed(self) -> int:
        """Requests answered to the end."""
        return self._c.completed

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies received (the last 200)."""
        return list(self._c.requests)

    @property
    def api_keys(self) -> list[str]:
        """The bearer keys received, in order (test keys only ever reach a sim)."""
        return list(self._c.api_keys)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The request headers received, in order (the last 200)."""
        return list(self._c.headers)

    @property
    def peers(self) -> list[tuple[str, int] | None]:
        """The client address of each request: a repeated one is a reused connection."""
        return list(self._c.peers)

    def reset_counters(self) -> None:
        """Zero every counter."""
        self._c = _Counters()

    async def wait_for(self, predicate: typing.Callable[[SimServer], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked on every counter change).

        Bounded at 10 s so a test that waits for something that never happens fails
        instead of hanging.
        """
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    def wait_for_sync(
        self, predicate: typing.Callable[[SimServer], bool], *, timeout: float = 10
    ) -> None:
        """:meth:`wait_for` from another thread (a server run by :func:`serve_in_thread`)."""
        assert self._loop is not None, "the server is not running"
        asyncio.run_coroutine_threadsafe(self.wait_for(predicate), self._loop).result(timeout)

    async def _bump(self, counter: str) -> None:
        setattr(self._c, counter, getattr(self._c, counter) + 1)
        async with self._changed:
            self._changed.notify_all()

    async def _stats(self, request: web.Request) -> web.Response:
        """Counters, for observers in another process (benchmarks)."""
        return web.json_response(
            {
                "hits": self._c.hits,
                "completed": self._c.completed,
                "disconnects": self._c.disconnects,
            }
        )

    # -- the endpoint --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, anthropic=False)

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, anthropic=True)

    async def _serve(self, request: web.Request, *, anthropic: bool) -> web.StreamResponse:
        b = self.behavior
        await self._bump("hits")
        number = self._c.hits
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        self._record(request, body)
        finished = False
        try:
            if b.reset:
                return self._drop(request, web.StreamResponse())
            if b.stall_headers:
                await asyncio.sleep(b.stall_headers)
            failing = (
                b.status
                if b.status is not None and b.status >= 400
                else b.fail_status
                if number <= b.fail_first
                else b.fail_status
                if b.flaky and self._rng.random() < b.flaky
                else None
            )
            key = self._c.api_keys[-1]
            if failing is not None and anthropic:
                resp: web.StreamResponse = _anthropic_error(failing, b, key)
            elif failing is not None:
                resp = self._error(failing, b, key)
            elif b.html:
                page = "<html><body><h1>Sign in to the network</h1></body></html>"
                resp = web.Response(text=page, content_type="text/html")
            elif b.not_completion:
                resp = web.json_response({"status": "ok"})
            elif anthropic and body.get("stream") and not b.ignore_stream:
                resp = await self._stream_messages(request, body, b)
            elif anthropic:
                resp = web.json_response(self._message(body, b))
            elif body.get("stream") and not b.ignore_stream:
                resp = await self._stream(request, body, b)
            else:
                resp = web.json_response(self._completion(body, b))
            finished = True
            return resp
        finally:
            await self._bump("completed" if finished else "disconnects")

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self._c.requests = [*self._c.requests[-(_MAX_RECORDED - 1) :], body]
        # Anthropic's x-api-key, else a bearer token (what gateways' clients send).
        auth = request.headers.get("Authorization", "")
        key = request.headers.get("x-api-key") or auth.removeprefix("Bearer ").strip()
        self._c.api_keys = [*self._c.api_keys[-(_MAX_RECORDED - 1) :], key]
        self._c.headers = [*self._c.headers[-(_MAX_RECORDED - 1) :], dict(request.headers)]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self._c.peers = [*self._c.peers[-(_MAX_RECORDED - 1) :], peer]

    @staticmethod
    def _error(status: int, b: Behavior, key: str = "") -> web.Response:
        kind = {
            400: "invalid_request_error",
            401: "invalid_api_key",
            403: "permission_denied",
            404: "not_found_error",
            429: "rate_limit_exceeded",
        }.get(status, "server_error")
        message = b.error_message or {
            "context_length_exceeded": "This model's maximum context length is 8192 tokens. "
            "However, your messages resulted in 9000 tokens.",
            "content_policy_violation": "Your request was rejected as a result of our "
            "safety system (content_policy_violation).",
        }.get(b.error_code or "", f"simulated {status} error")
        if b.echo_key:
            message += f" (Incorrect API key provided: {key})"
        headers = {}
        if b.retry_after is not None:
            headers["Retry-After"] = f"{b.retry_after:g}"
        if b.retry_after_date is not None:
            headers["Retry-After"] = email.utils.formatdate(
                time.time() + b.retry_after_date, usegmt=True
            )
        if b.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{b.retry_after_ms:g}"
        payload = {
            "error": {"message": message, "type": kind, "param": None, "code": b.error_code or kind}
        }
        return web.json_response(payload, status=status, headers=headers)

    # -- answers -------------------------------------------------------------------------

    def _usage(self, b: Behavior) -> dict[str, Any]:
        completion = b.completion_tokens if b.completion_tokens is not None else b.chunks
        usage: dict[str, Any] = {
            "prompt_tokens": b.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": b.prompt_tokens + completion,
        }
        if b.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": b.cached_tokens}
        return usage

    @staticmethod
    def _pieces(b: Behavior, prefix: str = "") -> list[str]:
        # Near-equal character slices, so `chunks` content deltas arrive (at most one
        # per character of the text); a prefix the caller already has is left out.
        text = b.text[len(prefix) :] if prefix and b.text.startswith(prefix) else b.text
        return _split(text, b.chunks)

    @staticmethod
    def _wants_tool(body: dict[str, Any], b: Behavior) -> dict[str, Any] | None:
        tools = body.get("tools") or []
        messages = body.get("messages") or []
        if not (b.tool_call and tools) or (messages and messages[-1].get("role") == "tool"):
            return None
        fn = tools[0].get("function", {})
        return {"name": fn.get("name", "tool"), "arguments": json.dumps({"city": "Paris"})}

    def _completion(self, body: dict[str, Any], b: Behavior) -> dict[str, Any]:
        tool = self._wants_tool(body, b)
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else b.text}
        if tool:
            message["tool_calls"] = [{"id": "call_sim_1", "type": "function", "function": tool}]
        out: dict[str, Any] = {
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": b.model or body.get("model", "sim"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}
            ],
        }
        if not b.no_usage:
            out["usage"] = self._usage(b)
        return out

    async def _stream(
        self, request: web.Request, body: dict[str, Any], b: Behavior
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        model = b.model or body.get("model", "sim")
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                "id": "chatcmpl-sim",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n".encode()

        if b.all_malformed:
            for _ in range(3):
                await resp.write(b'data: {"choices": [{"delta": {"content\n\n')
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        await resp.write(event({"role": "assistant", "content": ""}))
        if b.stall_first_chunk:
            await asyncio.sleep(b.stall_first_chunk)
        if b.malformed:
            await resp.write(b'data: {"id": "chatcmpl-sim", "choices": [{"delta": {"content\n\n')
        tool = self._wants_tool(body, b)
        parts: list[dict[str, Any]]
        if tool:
            args = tool["arguments"]
            head = {
                "index": 0,
                "id": "call_sim_1",
                "type": "function",
                "function": {"name": tool["name"], "arguments": ""},
            }
            parts = [{"tool_calls": [head]}] + [
                {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 8]}}]}
                for i in range(0, len(args), 8)
            ]
        else:
            parts = [{"content": p} for p in self._pieces(b, _prefix(body))]
        for i, delta in enumerate(parts):
            if b.drop_after is not None and i >= b.drop_after:
                return self._drop(request, resp)
            if b.reset_after is not None and i >= b.reset_after:
                return self._drop(request, resp, reset=True)
            if b.stall_after is not None and i >= b.stall_after:
                await asyncio.sleep(30)
            if b.stream_error_after is not None and i >= b.stream_error_after:
                error = {"error": {"message": "simulated error mid-stream", "code": 502}}
                await resp.write(f"data: {json.dumps(error)}\n\n".encode())
                await resp.write_eof()
                return resp
            if i and b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await resp.write(event(delta))
        if b.no_finish:
            await resp.write_eof()
            return resp
        await resp.write(event({}, "tool_calls" if tool else "stop"))
        if (body.get("stream_options") or {}).get("include_usage") and not b.no_usage:
            usage: dict[str, Any] = {
                "id": "chatcmpl-sim",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": self._usage(b),
            }
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        if not b.no_done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # -- Anthropic Messages answers --------------------------------------------------------

    @staticmethod
    def _wants_tool_use(body: dict[str, Any], b: Behavior) -> dict[str, Any] | None:
        tools = body.get("tools") or []
        if not (b.tool_call and tools) or _answers_tool(body):
            return None
        return {"name": tools[0].get("name", "tool"), "arguments": json.dumps({"city": "Paris"})}

    def _anthropic_usage(self, b: Behavior, output: int) -> dict[str, int]:
        # `cached_tokens` (of `prompt_tokens`) means what it means for OpenAI: Anthropic
        # counts those apart from `input_tokens`.
        return {
            "input_tokens": b.prompt_tokens - b.cached_tokens,
            "cache_creation_input_tokens": b.cache_write,
            "cache_read_input_tokens": b.cache_read + b.cached_tokens,
            "output_tokens": output,
        }

    def _message(self, body: dict[str, Any], b: Behavior) -> dict[str, Any]:
        """A whole Message (a request without ``stream``, or ``ignore_stream``)."""
        tool = self._wants_tool_use(body, b)
        content: list[dict[str, Any]] = []
        if b.thinking:
            content.append({"type": "thinking", "thinking": b.thinking, "signature": SIGNATURE})
        if tool:
            arguments = json.loads(tool["arguments"])
            content.append(
                {"type": "tool_use", "id": TOOL_USE_ID, "name": tool["name"], "input": arguments}
            )
        else:
            content.append({"type": "text", "text": "".join(self._pieces(b, _prefix(body)))})
        completion = b.completion_tokens if b.completion_tokens is not None else b.chunks
        return {
            "id": "msg_sim",
            "type": "message",
            "role": "assistant",
            "model": b.model or body.get("model", "sim"),
            "content": content,
            "stop_reason": "tool_use" if tool else "end_turn",
            "stop_sequence": None,
            "usage": self._anthropic_usage(b, completion),
        }

    async def _stream_messages(
        self, request: web.Request, body: dict[str, Any], b: Behavior
    ) -> web.StreamResponse:
        """A streamed Message, in the event order of Anthropic's streaming docs."""
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        start: dict[str, Any] = {
            "id": "msg_sim",
            "type": "message",
            "role": "assistant",
            "model": b.model or body.get("model", "sim"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._anthropic_usage(b, 1),
        }
        await resp.write(_sse({"type": "message_start", "message": start}))
        if b.stall_first_chunk:
            await asyncio.sleep(b.stall_first_chunk)
        if b.malformed:
            await resp.write(b'event: content_block_delta\ndata: {"type": "content_block_d\n\n')
        tool = self._wants_tool_use(body, b)
        # (is a content delta, event): the behaviour's counts are over content deltas.
        events: list[tuple[bool, dict[str, Any]]] = []

        def block(index: int, opening: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
            events.append((False, {"type": "content_block_start", "index": index, **opening}))
            if index == 0:
                events.append((False, {"type": "ping"}))
            events.extend(
                (True, {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
            )
            events.append((False, {"type": "content_block_stop", "index": index}))

        index = 0
        if b.thinking:
            pieces = _split(b.thinking, b.chunks)
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces]
            deltas.append({"type": "signature_delta", "signature": SIGNATURE})
            opening = {"content_block": {"type": "thinking", "thinking": "", "signature": ""}}
            block(index, opening, deltas)
            index += 1
        if tool:
            args = tool["arguments"]
            use = {"type": "tool_use", "id": TOOL_USE_ID, "name": tool["name"], "input": {}}
            opening = {"content_block": use}
            pieces = [args[i : i + 8] for i in range(0, len(args), 8)]
            block(index, opening, [{"type": "input_json_delta", "partial_json": p} for p in pieces])
        else:
            pieces = self._pieces(b, _prefix(body))
            opening = {"content_block": {"type": "text", "text": ""}}
            block(index, opening, [{"type": "text_delta", "text": p} for p in pieces])
        sent = 0
        for is_content, event in events:
            if is_content:
                if b.drop_after is not None and sent >= b.drop_after:
                    return self._drop(request, resp)
                if b.reset_after is not None and sent >= b.reset_after:
                    return self._drop(request, resp, reset=True)
                if b.stall_after is not None and sent >= b.stall_after:
                    await asyncio.sleep(30)
                if b.stream_error_after is not None and sent >= b.stream_error_after:
                    error = {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded (simulated)"},
                    }
                    await resp.write(_sse(error))
                    await resp.write_eof()
                    return resp
                if sent and b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                sent += 1
            await resp.write(_sse(event))
        if b.no_finish:
            await resp.write_eof()
            return resp
        completion = b.completion_tokens if b.completion_tokens is not None else b.chunks
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": completion},
        }
        await resp.write(_sse(delta))
        if not b.no_done:
            await resp.write(_sse({"type": "message_stop"}))
        await resp.write_eof()
        return resp

    @staticmethod
    def _drop(
        request: web.Request, resp: web.StreamResponse, *, reset: bool = False
    ) -> web.StreamResponse:
        # Abort without the chunked terminator: the client sees a truncated body,
        # as when a provider's connection dies mid-answer; `reset` makes the kernel
        # send an RST instead of a FIN.
        if request.transport is not None:
            sock = request.transport.get_extra_info("socket")
            if reset and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.abort()
        resp.force_close()
        return resp


def _prefix(body: dict[str, Any]) -> str:
    """The text of a trailing assistant message (a partial answer to continue)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return ""
    if isinstance(content, list):  # Anthropic text blocks
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


SIGNATURE = "c2ltdWxhdGVkLXNpZ25hdHVyZQ=="  # an opaque value, as Anthropic's are
TOOL_USE_ID = "toolu_sim_1"
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _sse(event: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: its type as the event name, the object as data."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _split(text: str, chunks: int) -> list[str]:
    """Near-equal slices of ``text`` (at most one per character)."""
    if not text:
        return []
    n = max(1, min(chunks, len(text)))
    bounds = [round(i * len(text) / n) for i in range(n + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(n)]


def _answers_tool(body: dict[str, Any]) -> bool:
    """Whether the last message hands back tool results (then the sim answers in text)."""
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else None
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "tool_result" for p in content
    )


def _anthropic_error(status: int, b: Behavior, key: str = "") -> web.Response:
    """An error in Anthropic's shape, with the behaviour's Retry-After."""
    kind = _ANTHROPIC_ERRORS.get(status, "api_error")
    message = b.error_message or {
        "context_length_exceeded": "prompt is too long: 250000 tokens > 200000 maximum",
    }.get(b.error_code or "", f"simulated {status} error")
    if b.echo_key:
        message += f" (invalid x-api-key: {key})"
    headers = {}
    if b.retry_after is not None:
        headers["retry-after"] = f"{b.retry_after:g}"
    if b.retry_after_date is not None:
        headers["retry-after"] = email.utils.formatdate(
            time.time() + b.retry_after_date, usegmt=True
        )
    if b.retry_after_ms is not None:
        headers["retry-after-ms"] = f"{b.retry_after_ms:g}"
    payload = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(payload, status=status, headers=headers)


@contextlib.asynccontextmanager
async def serve(
    behavior: Behavior | str | None = None, *, port: int = 0
) -> AsyncIterator[SimServer]:
    """Run one simulated backend for the duration of the block."""
    server = SimServer(behavior, port=port)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.contextmanager
def serve_in_thread(
    behavior: Behavior | str | None = None, *, port: int = 0
) -> typing.Iterator[SimServer]:
    """Run one simulated backend on its own event loop in a thread (for sync tests).

    Read its counters freely; change ``behavior`` between requests only.
    """
    import threading

    loop = asyncio.new_event_loop()
    server = SimServer(behavior, port=port)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="lbprovider-sim", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("simulated backend did not start")
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run_forever(
    behavior: Behavior, *, port: int = 0, duration: float | None = None, api: str = "openai"
) -> None:
    """Serve until Ctrl-C (or ``duration`` seconds); prints the base URL.

    ``api`` is only what the line says: one server answers both APIs, by path.
    """

    async def main() -> None:
        async with serve(behavior, port=port) as server:
            print(f"sim backend on {server.url} (api: {api}, behaviour: {behavior})", flush=True)
            stop = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
