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

For the routing benchmarks a backend can also keep a *prompt cache* (``cache_ttl``:
a prefix seen within the TTL is reported as cached tokens and answered sooner) and
*rate limits* (``rpm_limit``, ``tpm_limit`` over a rolling minute: 429 when exceeded,
and the provider's rate-limit headers on every answer).  Both read an injectable
clock (``SimServer(..., clock=...)``); sleeps stay real.

    async with serve("status=503,retry_after=1") as backend:
        ...  # backend.url is the api_base; backend.hits counts requests
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import enum
import hashlib
import json
import math
import random
import socket
import struct
import time
import typing
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = ["Behavior", "SimServer", "go_duration", "run_forever", "serve", "serve_in_thread"]

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
    # Usage's prompt tokens: default 12, or the prompt's estimate when `cache_ttl` is on.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # default: one per content chunk
    no_usage: bool = False  # never report usage (as some backends do)
    cached_tokens: int = 0  # this many of prompt_tokens were read from the cache (both APIs)
    tool_call: bool = False  # answer with a call to the request's first tool
    thinking: str = ""  # Anthropic: a thinking block (and its signature) before the text
    cache_read: int = 0  # Anthropic: cache_read_input_tokens reported
    cache_write: int = 0  # Anthropic: cache_creation_input_tokens reported
    # The prompt cache (see `_PromptCache`): off at 0; only prefixes of at least
    # cache_min_tokens (estimated, 4 characters a token) are cached, as providers do.
    cache_ttl: float = 0.0  # seconds a seen prefix stays cached (refreshed on each use)
    cache_min_tokens: int = 1024
    first_chunk_delay: float = 0.0  # seconds before the first content, uncached prompt
    cache_speedup: float = 4.0  # how much faster cached tokens are "read" than fresh ones
    # Rate limits over a rolling 60 s window of this server's admitted requests: 429
    # beyond them, and rate-limit headers (OpenAI or Anthropic style) on every answer.
    rpm_limit: int = 0  # requests a minute (0 = off)
    tpm_limit: int = 0  # tokens a minute, estimated prompt + completion (0 = off)
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
    limited: int = 0  # requests refused with 429 by rpm_limit / tpm_limit
    prompt_tokens: int = 0  # prompt tokens of the answers sent (usage's count)
    cached_tokens: int = 0  # of which read from the prompt cache
    requests: list[dict[str, Any]] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    peers: list[tuple[str, int] | None] = field(default_factory=list)


class SimServer:
    """One simulated backend on ``127.0.0.1``; an async context manager.

    ``behavior`` may be replaced between requests.  Counters (``hits``,
    ``disconnects``, ``limited``, ``requests``) let tests observe what reached the
    backend.  ``clock`` (epoch seconds, default :func:`time.time`) drives the prompt
    cache's TTL and the rate-limit window, so tests can move time by hand.
    """

    def __init__(
        self,
        behavior: Behavior | str | None = None,
        *,
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.behavior = Behavior.parse(behavior)
        self._port = port
        self._clock = clock
        self._cache = _PromptCache()
        self._window = _RateWindow()
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

    @property
    def limited(self) -> int:
        """Requests refused with 429 by ``rpm_limit`` / ``tpm_limit``."""
        return self._c.limited

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens of the answers so far (what their usage says, when they send it)."""
        return self._c.prompt_tokens

    @property
    def cached_tokens(self) -> int:
        """Of :attr:`prompt_tokens`, those reported as read from the prompt cache."""
        return self._c.cached_tokens

    def reset_counters(self) -> None:
        """Zero every counter (the prompt cache and the rate window stay)."""
        self._c = _Counters()

    def forget(self) -> None:
        """Empty the prompt cache and the rate-limit window."""
        self._cache = _PromptCache()
        self._window = _RateWindow()

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
                "limited": self._c.limited,
                "prompt_tokens": self._c.prompt_tokens,
                "cached_tokens": self._c.cached_tokens,
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
            turn = self._turn(body, b, anthropic=anthropic)
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
            if turn.limited is not None:
                await self._bump("limited")
                resp: web.StreamResponse = _limited_error(turn, anthropic=anthropic)
            elif failing is not None:
                error = _anthropic_error if anthropic else self._error
                resp = error(failing, b, key)
                resp.headers.update(turn.headers)
            elif b.html:
                page = "<html><body><h1>Sign in to the network</h1></body></html>"
                resp = web.Response(text=page, content_type="text/html")
            elif b.not_completion:
                resp = web.json_response({"status": "ok"})
            else:
                resp = await self._answer(request, body, b, turn, anthropic=anthropic)
            finished = True
            return resp
        finally:
            await self._bump("completed" if finished else "disconnects")

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        b: Behavior,
        turn: _Turn,
        *,
        anthropic: bool,
    ) -> web.StreamResponse:
        """A successful answer in the request's API form (its prompt is then cached)."""
        self._cache_store(turn, b)
        streaming = bool(body.get("stream")) and not b.ignore_stream
        if streaming and anthropic:
            return await self._stream_messages(request, body, b, turn)
        if streaming:
            return await self._stream(request, body, b, turn)
        whole = self._message(body, b, turn) if anthropic else self._completion(body, b, turn)
        await _sleep(turn.delay)
        return web.json_response(whole, headers=turn.headers)

    def _turn(self, body: dict[str, Any], b: Behavior, *, anthropic: bool) -> _Turn:
        """This request's prompt tokens, cache share, first-content delay and rate limits."""
        now = self._clock()
        model = str(body.get("model", ""))
        prefixes = _prompt_prefixes(body, model, anthropic=anthropic)
        estimate = prefixes[-1].tokens if prefixes else 0
        completion = b.completion_tokens if b.completion_tokens is not None else b.chunks
        if b.cache_ttl > 0:
            prompt = b.prompt_tokens if b.prompt_tokens is not None else estimate
            read = min(prompt, self._cache.lookup(prefixes, now, b.cache_ttl, b.cache_min_tokens))
            write = prompt - read if estimate >= b.cache_min_tokens else 0
            fresh = (prompt - read) / prompt if prompt else 1.0
            delay = b.first_chunk_delay * (fresh + (1 - fresh) / max(b.cache_speedup, 1.0))
        else:
            prompt = b.prompt_tokens if b.prompt_tokens is not None else 12
            read, write, delay = b.cache_read, b.cache_write, b.first_chunk_delay
        turn = _Turn(prompt, read, write, delay, prefixes, cached=b.cache_ttl > 0)
        if not (b.rpm_limit or b.tpm_limit):
            return turn
        counted = b.prompt_tokens if b.prompt_tokens is not None else estimate
        verdict = self._window.admit(now, counted, completion, b.rpm_limit, b.tpm_limit)
        headers = verdict.headers(now, anthropic=anthropic)
        return dataclasses.replace(
            turn, headers=headers, limited=verdict.over, retry_after=verdict.retry_after
        )

    def _cache_store(self, turn: _Turn, b: Behavior) -> None:
        """Remember a served prompt's prefixes, and count its tokens."""
        if turn.cached:
            self._cache.store(turn.prefixes, self._clock(), b.cache_min_tokens)
        self._c.prompt_tokens += turn.prompt
        self._c.cached_tokens += turn.read

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

    def _usage(self, b: Behavior, turn: _Turn) -> dict[str, Any]:
        completion = b.completion_tokens if b.completion_tokens is not None else b.chunks
        usage: dict[str, Any] = {
            "prompt_tokens": turn.prompt,
            "completion_tokens": completion,
            "total_tokens": turn.prompt + completion,
        }
        # A fixed `cached_tokens` (the cache off) or what the prompt cache read: as OpenAI
        # reports it, prompt_tokens counts the cached ones too.
        if turn.cached or b.cached_tokens:
            cached = turn.read if turn.cached else b.cached_tokens
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
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

    def _completion(self, body: dict[str, Any], b: Behavior, turn: _Turn) -> dict[str, Any]:
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
            out["usage"] = self._usage(b, turn)
        return out

    async def _stream(
        self, request: web.Request, body: dict[str, Any], b: Behavior, turn: _Turn
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **turn.headers,
            }
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
        await _sleep(turn.delay + b.stall_first_chunk)
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
                "usage": self._usage(b, turn),
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

    @staticmethod
    def _anthropic_usage(turn: _Turn, output: int, b: Behavior) -> dict[str, int]:
        # With the prompt cache on, Anthropic's three input counts add up to the prompt;
        # without it the behaviour's fixed cache counts come on top (as before), and a
        # fixed `cached_tokens` of the prompt is counted apart from `input_tokens`, as
        # it means for OpenAI.
        if turn.cached:
            fresh, read = turn.prompt - turn.read - turn.write, turn.read
        else:
            fresh, read = turn.prompt - b.cached_tokens, turn.read + b.cached_tokens
        return {
            "input_tokens": fresh,
            "cache_creation_input_tokens": turn.write,
            "cache_read_input_tokens": read,
            "output_tokens": output,
        }

    def _message(self, body: dict[str, Any], b: Behavior, turn: _Turn) -> dict[str, Any]:
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
            "usage": self._anthropic_usage(turn, completion, b),
        }

    async def _stream_messages(
        self, request: web.Request, body: dict[str, Any], b: Behavior, turn: _Turn
    ) -> web.StreamResponse:
        """A streamed Message, in the event order of Anthropic's streaming docs."""
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                **turn.headers,
            }
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
            "usage": self._anthropic_usage(turn, 1, b),
        }
        await resp.write(_sse({"type": "message_start", "message": start}))
        await _sleep(turn.delay + b.stall_first_chunk)
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


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


# -- the prompt cache ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Prefix:
    """The prompt up to a message boundary: its hash and its estimated tokens."""

    digest: bytes
    tokens: int


def _content_text(content: Any) -> str:
    """A message's content as text: text parts as they are, other parts as JSON.

    ``cache_control`` markers are left out: clients move them to the newest message each
    turn, and a moved marker must not make an earlier prefix look new.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                rest = {k: v for k, v in part.items() if k != "cache_control"}
                parts.append(json.dumps(rest, sort_keys=True))
            else:
                parts.append(json.dumps(part, sort_keys=True))
        return "".join(parts)
    return json.dumps(content, sort_keys=True)


def _prompt_prefixes(body: dict[str, Any], model: str, *, anthropic: bool) -> list[_Prefix]:
    """Every prefix of the prompt at a message boundary (system first), shortest first.

    Tokens are estimated at 4 characters a token over the system and messages text, so
    the same prompt always counts the same; the hash covers the model and each
    message's role, so another model or a changed message is another prefix.
    """
    segments: list[tuple[str, str]] = []
    if anthropic and body.get("system"):
        segments.append(("system", _content_text(body["system"])))
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        text = _content_text(message.get("content"))
        if message.get("tool_calls"):
            text += json.dumps(message["tool_calls"], sort_keys=True)
        segments.append((str(message.get("role", "")), text))
    digest = hashlib.sha256(model.encode())
    chars = 0
    out: list[_Prefix] = []
    for role, text in segments:
        digest.update(json.dumps([role, text]).encode())
        chars += len(text)
        out.append(_Prefix(digest.copy().digest(), math.ceil(chars / 4)))
    return out


class _PromptCache:
    """The prefixes a backend has served, with when each was last seen.

    A request's cached tokens are those of its longest prefix seen within the TTL
    (and at least ``cache_min_tokens``); serving it refreshes every prefix, as a
    provider's cache hit restarts its TTL.  Bounded: the least recently seen go first.
    """

    def __init__(self, bound: int = 100_000) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._bound = bound

    def lookup(self, prefixes: list[_Prefix], now: float, ttl: float, min_tokens: int) -> int:
        """The tokens of the longest live cached prefix (0 when none)."""
        for prefix in reversed(prefixes):
            if prefix.tokens < min_tokens:
                return 0
            seen = self._seen.get(prefix.digest)
            if seen is not None and now - seen < ttl:
                return prefix.tokens
        return 0

    def store(self, prefixes: list[_Prefix], now: float, min_tokens: int) -> None:
        """Remember every cacheable prefix as seen ``now``."""
        for prefix in prefixes:
            if prefix.tokens >= min_tokens:
                self._seen[prefix.digest] = now
                self._seen.move_to_end(prefix.digest)
        while len(self._seen) > self._bound:
            self._seen.popitem(last=False)


# -- rate limits ----------------------------------------------------------------------------

_WINDOW = 60.0  # seconds: rpm_limit and tpm_limit are per rolling minute


class _Over(enum.Enum):
    """Which limit refused a request."""

    REQUESTS = "requests"
    TOKENS = "tokens"


@dataclass(frozen=True)
class _Verdict:
    """A rate-limit decision and what the headers say after it."""

    over: _Over | None
    retry_after: int | None  # whole seconds until the window frees enough (ceil)
    rpm: int
    tpm: int
    used_requests: int
    used_prompt: int
    used_completion: int
    reset_in: float  # seconds until the window is empty again ("fully replenished")

    def headers(self, now: float, *, anthropic: bool) -> dict[str, str]:
        """The rate-limit headers of the API form (only for the limits that are set)."""
        out: dict[str, str] = {}
        reset = max(self.reset_in, 0.0)
        used_tokens = self.used_prompt + self.used_completion
        if anthropic:
            at = _rfc3339(now + reset)
            if self.rpm:
                remaining = max(self.rpm - self.used_requests, 0)
                out.update(_anthropic_trio("requests", self.rpm, remaining, at))
            if self.tpm:
                # One limit over prompt + completion; the input and output trios show the
                # same limit against each side alone, so `tokens` is always the smallest.
                for name, used in (
                    ("tokens", used_tokens),
                    ("input-tokens", self.used_prompt),
                    ("output-tokens", self.used_completion),
                ):
                    out.update(_anthropic_trio(name, self.tpm, max(self.tpm - used, 0), at))
        else:
            duration = go_duration(reset)
            if self.rpm:
                out["x-ratelimit-limit-requests"] = str(self.rpm)
                out["x-ratelimit-remaining-requests"] = str(max(self.rpm - self.used_requests, 0))
                out["x-ratelimit-reset-requests"] = duration
            if self.tpm:
                out["x-ratelimit-limit-tokens"] = str(self.tpm)
                out["x-ratelimit-remaining-tokens"] = str(max(self.tpm - used_tokens, 0))
                out["x-ratelimit-reset-tokens"] = duration
        if self.retry_after is not None:
            out["retry-after"] = str(self.retry_after)
        return out


def _anthropic_trio(name: str, limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {
        f"anthropic-ratelimit-{name}-limit": str(limit),
        f"anthropic-ratelimit-{name}-remaining": str(remaining),
        f"anthropic-ratelimit-{name}-reset": reset,
    }


class _RateWindow:
    """The admitted requests of the last minute: (time, prompt tokens, completion tokens)."""

    def __init__(self) -> None:
        self._entries: deque[tuple[float, int, int]] = deque()

    def admit(self, now: float, prompt: int, completion: int, rpm: int, tpm: int) -> _Verdict:
        """Admit one request (counting it) or refuse it, saying when to come back."""
        while self._entries and self._entries[0][0] <= now - _WINDOW:
            self._entries.popleft()
        entries = list(self._entries)
        over, retry = None, None
        if rpm and len(entries) >= rpm:
            # The oldest len - rpm + 1 requests must leave the window first.
            over, retry = _Over.REQUESTS, entries[len(entries) - rpm][0] + _WINDOW - now
        elif tpm:
            excess = sum(p + c for _, p, c in entries) + prompt + completion - tpm
            if excess > 0:
                over, retry = _Over.TOKENS, _WINDOW
                for t, p, c in entries:
                    excess -= p + c
                    if excess <= 0:
                        retry = t + _WINDOW - now
                        break
        if over is None:
            self._entries.append((now, prompt, completion))
            entries.append((now, prompt, completion))
        return _Verdict(
            over=over,
            retry_after=None if retry is None else max(1, math.ceil(retry)),
            rpm=rpm,
            tpm=tpm,
            used_requests=len(entries),
            used_prompt=sum(p for _, p, _ in entries),
            used_completion=sum(c for _, _, c in entries),
            reset_in=entries[-1][0] + _WINDOW - now if entries else 0.0,
        )


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's headers write it (Go's style): ``20ms``, ``59.5s``, ``6m0s``."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _rfc3339(epoch: float) -> str:
    """An RFC 3339 UTC time, rounded up to the second (a reset never comes early)."""
    return datetime.fromtimestamp(math.ceil(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Turn:
    """What one request gets: usage's prompt and cache tokens, its delay, its headers."""

    prompt: int  # usage's prompt tokens (all of them, cached included)
    read: int  # of which read from the cache
    write: int  # of which newly written to it (reported by the Anthropic form)
    delay: float  # seconds before the first content
    prefixes: list[_Prefix]
    cached: bool  # the prompt cache is on
    headers: dict[str, str] = field(default_factory=dict)
    limited: _Over | None = None
    retry_after: int | None = None


def _limited_error(turn: _Turn, *, anthropic: bool) -> web.Response:
    """A 429 for a request over ``rpm_limit`` / ``tpm_limit``, in the API's error shape."""
    over = turn.limited.value if turn.limited else "requests"
    unit = "requests per min (RPM)" if over == "requests" else "tokens per min (TPM)"
    message = f"Rate limit reached on {unit}. Please try again in {turn.retry_after}s."
    payload: dict[str, Any]
    if anthropic:
        payload = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
    else:
        payload = {
            "error": {
                "message": message,
                "type": over,
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    return web.json_response(payload, status=429, headers=turn.headers)


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
    behavior: Behavior | str | None = None,
    *,
    port: int = 0,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[SimServer]:
    """Run one simulated backend for the duration of the block."""
    server = SimServer(behavior, port=port, clock=clock)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.contextmanager
def serve_in_thread(
    behavior: Behavior | str | None = None,
    *,
    port: int = 0,
    clock: Callable[[], float] = time.time,
) -> typing.Iterator[SimServer]:
    """Run one simulated backend on its own event loop in a thread (for sync tests).

    Read its counters freely; change ``behavior`` between requests only.
    """
    import threading

    loop = asyncio.new_event_loop()
    server = SimServer(behavior, port=port, clock=clock)
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
