"""The ``litellm`` transport: one member = one streamed ``litellm.acompletion`` call.

For every provider the native transport does not speak (SPEC §4.1).  litellm is
imported lazily, on the first call (``warm_up``), because importing it costs seconds;
nothing else in the package imports it.  litellm's exceptions are translated here, at
the boundary, into :class:`~lbprovider.errors.TransportError` — facts this relies on
(docs/design.md): every error carries ``status_code``; a refused connection is a 500
"Connection error." whose cause chain holds the connect error; ``Retry-After`` is in
``litellm_response_headers``.  Closing the iterator closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from lbprovider.config import Member
from lbprovider.errors import ConfigError, TransportError
from lbprovider.redaction import scrub
from lbprovider.transport import (
    Chunk,
    ToolCallDelta,
    Usage,
    Wire,
    call_params,
    host_port,
    member_secrets,
    parse_retry_after,
)

__all__ = [
    "INSTALL_HINT",
    "LiteLLMTransport",
    "convert_chunk",
    "require_litellm",
    "to_transport_error",
    "warm_up",
]

# litellm's classes for a request the provider refused on its content, by error code.
_CODE_OF_CLASS = {
    "ContextWindowExceededError": "context_length_exceeded",
    "ContentPolicyViolationError": "content_policy_violation",
}
_TIMEOUT_CLASSES = frozenset({"Timeout", "APITimeoutError", "ReadTimeout", "ConnectTimeout"})
_NETWORK_CLASS_NAMES = frozenset(
    {
        # httpx / httpcore, underneath litellm's openai client
        "ConnectError",
        "ConnectTimeout",
        "ReadError",
        "ReadTimeout",
        "WriteError",
        "RemoteProtocolError",
        "NetworkError",
        "PoolTimeout",
        # aiohttp, litellm's other HTTP client
        "ClientConnectorError",
        "ClientConnectionError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "ClientConnectionResetError",
        # openai / litellm
        "APIConnectionError",
        "MidStreamFallbackError",
    }
)
_NETWORK_MESSAGES = re.compile(
    r"connection error|connection refused|connection reset|name or service not known|"
    r"temporary failure in name resolution|response payload is not completed|"
    r"server disconnected|timeout on reading data",
    re.I,
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_network_error(chain: list[BaseException]) -> bool:
    """Connection refused/reset, DNS, read errors: anywhere in the cause chain."""
    for e in chain:
        if isinstance(e, ConnectionError | socket.gaierror | TimeoutError):
            return True
        if type(e).__name__ in _NETWORK_CLASS_NAMES:
            return True
        if _NETWORK_MESSAGES.search(str(e)):
            return True
    return False


def _headers(exc: BaseException) -> Mapping[str, Any] | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers:
        return dict(headers)
    response = getattr(exc, "response", None)
    raw = getattr(response, "headers", None)
    return dict(raw) if raw else None


def to_transport_error(exc: BaseException, member: Member) -> TransportError:
    """litellm's exception (or anything under it) as the neutral transport error."""
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    network = _is_network_error(chain)
    code = next((_CODE_OF_CLASS[n] for n in names if n in _CODE_OF_CLASS), None)
    if code is None:
        raw_code = getattr(exc, "code", None)
        code = raw_code if isinstance(raw_code, str) and raw_code else None
    message = scrub(str(exc) or type(exc).__name__, member_secrets(member))
    where = host_port(member.api_base, "")
    if network and where and where not in message:
        message = f"{message} ({where})"  # litellm's "Connection error." names no host
    return TransportError(
        message,
        member=member.name,
        # litellm reports a refused connection as a synthetic 500: no response came.
        status=None if network and status == 500 else status,
        retry_after=parse_retry_after(_headers(exc)),
        code=code,
        network=network,
        timeout=bool(names & _TIMEOUT_CLASSES) or status == 408,
    )


INSTALL_HINT = "pip install 'lbprovider[litellm]'"


def require_litellm(member: Member) -> None:
    """Raise :class:`ConfigError` naming ``member`` when litellm is not installed.

    litellm is an extra (``lbprovider[litellm]``); only members of providers the native
    transports do not speak need it.  Looks for the module without importing it (that
    costs seconds).
    """
    try:
        found = importlib.util.find_spec("litellm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            f"member {member.name!r} ({member.litellm_model}) uses the litellm transport, "
            "and litellm is not installed",
            file=member.file,
            field="ephemeralSettings.transport",
            hint=f"run {INSTALL_HINT}, or give the member a provider the native transports "
            "speak (openai-compatible, anthropic)",
        )


def _load_litellm() -> Any:
    # The cost map fetch at import would touch the internet; keep a user's explicit value.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    return litellm


class _Warm:
    """Process-wide once-only warm-up of litellm (its state is process-wide too)."""

    litellm: Any = None
    lock: asyncio.Lock | None = None


async def _exercise(litellm: Any) -> None:
    """Run litellm's streaming path once, with no backend, so its lazy imports and
    schema builds (about 0.3-0.5 s on a cold process) do not land inside the first
    request's first-chunk timeout."""
    messages = [{"role": "user", "content": "warm-up"}]
    mock = await litellm.acompletion(
        model="openai/warm-up",
        messages=messages,
        stream=True,
        mock_response="ok",
        api_key="sk-warm-up",
    )
    async for _ in mock:
        pass
    # A refused connection on loopback (a bound socket that does not listen) builds the
    # HTTP client and the error-mapping path without reaching anything.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with contextlib.suppress(Exception):
            await litellm.acompletion(
                model="openai/warm-up",
                messages=messages,
                stream=True,
                max_retries=0,
                api_base=f"http://127.0.0.1:{port}/v1",
                api_key="sk-warm-up",
                _skip_mcp_handler=True,
            )


async def warm_up() -> Any:
    """Import and exercise litellm once per process; returns the module."""
    if _Warm.litellm is None:
        if _Warm.lock is None:
            _Warm.lock = asyncio.Lock()
        async with _Warm.lock:
            if _Warm.litellm is None:
                module = await asyncio.to_thread(_load_litellm)
                with contextlib.suppress(Exception):
                    await _exercise(module)
                _Warm.litellm = module
    return _Warm.litellm


class LiteLLMTransport:
    """Streams through ``litellm.acompletion`` with our retry layer as the only one."""

    def __init__(self) -> None:
        self._litellm: Any = None

    async def warm_up(self) -> None:
        """Import litellm in a worker thread and exercise it once (per process)."""
        if self._litellm is None:
            self._litellm = await warm_up()

    def call_kwargs(
        self, member: Member, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The keyword arguments of one backend call (member settings win)."""
        kwargs = call_params(member, params)
        kwargs.update(
            model=member.litellm_model,
            messages=list(messages),
            stream=True,
            stream_options={"include_usage": True},
            max_retries=0,
            # litellm 1.106 imports its MCP gateway (and the absent `mcp` package)
            # whenever tools are passed; a balancer never wants that gateway.
            _skip_mcp_handler=True,
        )
        if member.api_base:
            kwargs["api_base"] = member.api_base
        if member.api_key is not None:
            kwargs["api_key"] = member.api_key.get_secret_value()
        return kwargs

    async def stream(
        self,
        member: Member,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        wire: Wire | None = None,
    ) -> AsyncIterator[Chunk]:
        """Yield the member's answer as chunks; the upstream is closed on exit.  (litellm
        speaks no client's wire format as it is: ``wire`` is never passed through.)"""
        await self.warm_up()
        try:
            response = await self._litellm.acompletion(**self.call_kwargs(member, messages, params))
        except Exception as exc:
            raise to_transport_error(exc, member) from exc
        try:
            readable = False
            async for raw in response:
                chunk = convert_chunk(raw, member)
                if chunk is not None:
                    readable = readable or bool(chunk.text or chunk.tool_calls or chunk.usage)
                    yield chunk
            if not readable:
                # litellm makes up a lone finish_reason for a body it could not read (an
                # HTML page, a JSON object that is no completion): nothing came, which is
                # a failure with no status, never an empty success.
                raise TransportError("no readable event in the answer", member=member.name)
        except TransportError:
            raise
        except Exception as exc:
            raise to_transport_error(exc, member) from exc
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:
                await close()


def convert_chunk(raw: Any, member: Member) -> Chunk | None:
    """A litellm ``ModelResponseStream`` as a :class:`Chunk` (None if it carries nothing).

    Runs once per streamed chunk: attributes are read directly where litellm always
    sets them (pydantic's ``getattr`` fallbacks cost microseconds each).
    """
    text = ""
    tools: tuple[ToolCallDelta, ...] = ()
    finish = None
    choices = raw.choices
    if choices:
        choice = choices[0]
        delta = choice.delta
        finish = choice.finish_reason
        if delta is not None:
            text = delta.content or ""
            calls = delta.tool_calls
            if calls:
                tools = tuple(
                    ToolCallDelta(
                        index=tc.index or 0,
                        id=tc.id,
                        name=tc.function.name if tc.function else None,
                        arguments=(tc.function.arguments if tc.function else None) or "",
                    )
                    for tc in calls
                )
    usage = None
    raw_usage = getattr(raw, "usage", None)
    if raw_usage is not None:
        details = getattr(raw_usage, "prompt_tokens_details", None)
        usage = Usage(
            prompt_tokens=int(raw_usage.prompt_tokens or 0),
            completion_tokens=int(raw_usage.completion_tokens or 0),
            cache_read_tokens=int(getattr(details, "cached_tokens", None) or 0),
        )
    if not (text or tools or finish or usage):
        return None
    return Chunk(
        text=text,
        tool_calls=tools,
        finish_reason=finish,
        usage=usage,
        backend=member.name,
        model=member.litellm_model,
    )
