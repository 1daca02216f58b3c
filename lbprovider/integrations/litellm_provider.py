"""The LiteLLM custom provider ``lb`` (SPEC §10): ``litellm.completion(model="lb/NAME")``.

``handler`` is a :class:`litellm.CustomLLM`; :func:`register` adds it to
``litellm.custom_provider_map``.  The LiteLLM proxy loads the same handler from its
``config.yaml`` (``custom_handler: lbprovider.integrations.litellm_provider.handler``),
which is how aider, Claude Code and Codex reach it.  This module is only imported
by litellm hosts, so importing litellm here costs nothing extra.

Engine errors become litellm's exception classes with the matching status, so
litellm-based tools and the proxy retry, fall back or report them as they would for
any provider.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import litellm
from litellm.exceptions import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import Choices, GenericStreamingChunk, Message, ModelResponse, Usage

from lbprovider.errors import (
    ConfigError,
    FailureKind,
    LBError,
    NoBackendAvailableError,
    ProfileNotFoundError,
    StreamInterruptedError,
)
from lbprovider.integrations._bridge import iterate, run
from lbprovider.transport import Chunk

__all__ = ["LBHandler", "handler", "register", "to_litellm_error"]

PROVIDER = "lb"

# litellm's own plumbing, never a backend parameter
_DROP = frozenset({"stream", "stream_options", "max_retries", "num_retries"})


def _profile_name(model: str) -> str:
    return model.removeprefix(f"{PROVIDER}/")


def _params(optional_params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (optional_params or {}).items() if k not in _DROP and v is not None}


def to_litellm_error(exc: LBError, model: str) -> Exception:
    """The litellm exception a host expects for an engine error (status preserved)."""
    message = str(exc)
    name = f"{PROVIDER}/{_profile_name(model)}"
    status = getattr(exc, "status", None)
    if isinstance(exc, ProfileNotFoundError):
        return NotFoundError(message, model=name, llm_provider=PROVIDER)
    if isinstance(exc, ConfigError):
        return BadRequestError(message, model=name, llm_provider=PROVIDER)
    if isinstance(exc, StreamInterruptedError):
        return ServiceUnavailableError(message, llm_provider=PROVIDER, model=name)
    if isinstance(exc, NoBackendAvailableError) and not exc.retryable:
        kinds = {f.kind for f in exc.failures}
        if kinds == {FailureKind.REQUEST}:
            if status == 404:
                return NotFoundError(message, model=name, llm_provider=PROVIDER)
            return BadRequestError(message, model=name, llm_provider=PROVIDER)
    if status == 429:
        return RateLimitError(message, llm_provider=PROVIDER, model=name)
    if status == 401:
        return AuthenticationError(message, llm_provider=PROVIDER, model=name)
    if status == 403:
        return PermissionDeniedError(
            message, llm_provider=PROVIDER, model=name, response=_response(403)
        )
    # Every member down, failing or open: temporarily unavailable, worth retrying later.
    return ServiceUnavailableError(message, llm_provider=PROVIDER, model=name)


def _response(status: int) -> Any:
    import httpx

    return httpx.Response(status, request=httpx.Request("POST", "http://lbprovider.invalid"))


def _provider(model: str) -> Any:
    from lbprovider.provider import LoadBalancingProvider

    return LoadBalancingProvider.from_profile(_profile_name(model))


def _generic(chunk: Chunk) -> GenericStreamingChunk:
    tool_use = None
    if chunk.tool_calls:
        delta = chunk.tool_calls[0]
        tool_use = {
            "id": delta.id,
            "type": "function",
            "index": delta.index,
            "function": {"name": delta.name, "arguments": delta.arguments},
        }
    usage = chunk.usage.to_dict() if chunk.usage is not None else None
    return GenericStreamingChunk(
        text=chunk.text,
        tool_use=tool_use,  # type: ignore[typeddict-item]
        is_finished=chunk.finish_reason is not None or usage is not None,
        finish_reason=chunk.finish_reason or "",
        usage=usage,  # type: ignore[typeddict-item]
        index=0,
    )


def _split(chunk: Chunk) -> Iterator[Chunk]:
    """One chunk per tool-call delta: litellm's generic chunk carries one ``tool_use``."""
    if len(chunk.tool_calls) <= 1:
        yield chunk
        return
    for i, delta in enumerate(chunk.tool_calls):
        last = i == len(chunk.tool_calls) - 1
        yield Chunk(
            text=chunk.text if i == 0 else "",
            tool_calls=(delta,),
            finish_reason=chunk.finish_reason if last else None,
            usage=chunk.usage if last else None,
            backend=chunk.backend,
            model=chunk.model,
        )


async def _astream(
    model: str, messages: list[Any], optional_params: Mapping[str, Any] | None
) -> AsyncIterator[GenericStreamingChunk]:
    try:
        provider = _provider(model)
        usage = None
        finish = None
        async for chunk in provider.stream(messages, **_params(optional_params)):
            usage = chunk.usage or usage
            finish = chunk.finish_reason or finish
            for part in _split(chunk):
                if part.text or part.tool_calls:
                    yield _generic(Chunk(text=part.text, tool_calls=part.tool_calls))
        # Usage (and the finish reason) on the final chunk, as OpenAI streams it.
        yield _generic(Chunk(finish_reason=finish or "stop", usage=usage))
    except LBError as exc:
        raise to_litellm_error(exc, model) from exc


class LBHandler(CustomLLM):
    """Routes ``lb/NAME`` requests through the load balancer NAME.

    litellm calls these methods with keyword arguments only; we read the two we need
    (``optional_params``, ``model_response``) from ``kwargs``.
    """

    def completion(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        """Non-streaming, from synchronous code (the engine runs on a background loop)."""
        return run(self.acompletion(model, messages, *args, **kwargs))

    async def acompletion(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        """Non-streaming: the whole answer, usage and tool calls in one ModelResponse."""
        try:
            result = await _provider(model).complete(
                messages, **_params(kwargs.get("optional_params"))
            )
        except LBError as exc:
            raise to_litellm_error(exc, model) from exc
        response: ModelResponse = kwargs.get("model_response") or ModelResponse()
        message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
        if result.tool_calls:
            message["tool_calls"] = result.tool_calls
        response.choices = [
            Choices(
                index=0,
                message=Message(**message),
                finish_reason=result.finish_reason
                or ("tool_calls" if result.tool_calls else "stop"),
            )
        ]
        response.model = f"{PROVIDER}/{_profile_name(model)}"
        response.created = int(time.time())
        if result.usage is not None:
            response.usage = Usage(  # type: ignore[attr-defined]
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                total_tokens=result.usage.total_tokens,
            )
        response._hidden_params["lbprovider_backend"] = result.backend
        response._hidden_params["lbprovider_model"] = result.model
        return response

    def streaming(
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> Iterator[GenericStreamingChunk]:
        """Streaming, from synchronous code."""
        optional = kwargs.get("optional_params")
        yield from iterate(lambda: _astream(model, messages, optional))

    # The base class declares a coroutine returning an iterator; litellm iterates the
    # result of calling it, which an async generator satisfies.
    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        """Streaming: text and tool-call deltas as they come, usage on the last chunk."""
        async for chunk in _astream(model, messages, kwargs.get("optional_params")):
            yield chunk


handler = LBHandler()


def register() -> None:
    """Make ``litellm.completion(model="lb/NAME", ...)`` route through lbprovider."""
    entry: Any = {"provider": PROVIDER, "custom_handler": handler}
    if not any(p.get("provider") == PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map.append(entry)
    from litellm.utils import custom_llm_setup

    custom_llm_setup()  # type: ignore[no-untyped-call]
