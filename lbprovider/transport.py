"""Transport: one member = one litellm streaming call, as small typed chunks.

litellm is imported lazily, on the first call (``warm_up``), because importing it
costs seconds; nothing else in the package imports it.  The stream yields only
chunks that carry something (text, tool-call deltas, a finish reason or usage):
a role-only chunk is dropped, so the first item *is* the first content chunk the
first-chunk timeout waits for.  Closing the iterator closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lbprovider.profiles import Member

__all__ = ["RESERVED_KWARGS", "Chunk", "LiteLLMTransport", "ToolCallDelta", "Transport", "Usage"]

# Caller keyword arguments that would override what the member decides, or our own
# retry/stream handling: dropped so that a key never leaks from caller to member.
RESERVED_KWARGS = frozenset(
    {
        "model",
        "messages",
        "api_key",
        "api_base",
        "base_url",
        "stream",
        "stream_options",
        "max_retries",
        "num_retries",
        "custom_llm_provider",
        "mock_response",
        "fallbacks",
    }
)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """prompt + completion."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        """OpenAI's usage object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call (OpenAI delta format)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed piece of an answer. ``backend`` names the member that served it."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    backend: str | None = None
    model: str | None = None

    @property
    def is_content(self) -> bool:
        """Text or a tool-call delta (a role-only chunk is not content)."""
        return bool(self.text or self.tool_calls)


class Transport(Protocol):
    """How the engine reaches one member."""

    async def warm_up(self) -> None:
        """One-time set-up that must not count against the first-chunk timeout."""
        ...

    def stream(
        self, member: Member, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> AsyncIterator[Chunk]:
        """Stream one answer from ``member``; closing the iterator closes the upstream."""
        ...


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
        kwargs: dict[str, Any] = {**member.model_params}
        kwargs.update({k: v for k, v in params.items() if k not in RESERVED_KWARGS})
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
        self, member: Member, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> AsyncIterator[Chunk]:
        """Yield the member's answer as chunks; the upstream is closed on exit."""
        await self.warm_up()
        response = await self._litellm.acompletion(**self.call_kwargs(member, messages, params))
        try:
            async for raw in response:
                chunk = convert_chunk(raw, member)
                if chunk is not None:
                    yield chunk
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
        usage = Usage(
            prompt_tokens=int(raw_usage.prompt_tokens or 0),
            completion_tokens=int(raw_usage.completion_tokens or 0),
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
