"""The LiteLLM custom provider ``lb`` (SPEC §10): ``litellm.completion(model="lb/NAME")``.

``handler`` is a :class:`litellm.CustomLLM`; :func:`register` adds it to
``litellm.custom_provider_map``.  The LiteLLM proxy loads the same handler from its
``config.yaml`` (``custom_handler: lbprovider.integrations.litellm_provider.handler``),
which is how aider, Claude Code and Codex reach it.  This module is only imported
by litellm hosts, so importing litellm here costs nothing extra.

What the host is told (SPEC §10):

- the response's ``model`` is the serving member's ``provider/model``, with its usage;
  when the request failed over, ``x-litellm-attempted-fallbacks: N`` (which keeps the
  proxy from restamping ``model``) and ``x-lbprovider-backend: MEMBER`` travel as
  response headers (``_hidden_params["additional_headers"]``);
- a streamed response is opened up to its first chunk *before* it is handed to the
  host, so when nothing can serve, ``acompletion`` itself raises and every proxy
  endpoint answers a real status instead of a 200 with an error inside the stream;
- errors are litellm's exception classes with the matching status — 503 (429 when
  every member was rate limited, with ``Retry-After`` when the first recovery is
  known), 400 for a rejected request, 401 when every member rejected its key.

``LBPROVIDER_ALLOWED_PROFILES`` (comma-separated) limits the load balancers served.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import litellm
from litellm import constants as litellm_constants
from litellm.exceptions import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import (
    Choices,
    Delta,
    Message,
    ModelResponse,
    ModelResponseStream,
    StreamingChoices,
    Usage,
)

from lbprovider.errors import (
    ConfigError,
    FailureKind,
    LBError,
    NoBackendAvailableError,
    ProfileNotFoundError,
    StreamInterruptedError,
)
from lbprovider.integrations._bridge import aiterate, iterate, run
from lbprovider.routing import RequestTrace
from lbprovider.transport import Chunk

__all__ = ["ALLOWED_ENV", "LBHandler", "handler", "register", "to_litellm_error"]

PROVIDER = "lb"
ALLOWED_ENV = "LBPROVIDER_ALLOWED_PROFILES"

# litellm's own plumbing, never a backend parameter
_DROP = frozenset({"stream", "stream_options", "max_retries", "num_retries"})


def _profile_name(model: str) -> str:
    return model.removeprefix(f"{PROVIDER}/")


def _params(optional_params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (optional_params or {}).items() if k not in _DROP and v is not None}


def to_litellm_error(exc: LBError, model: str) -> Exception:
    """The litellm exception a host expects for an engine error (status preserved,
    ``Retry-After`` attached when it is known)."""
    message = str(exc)
    name = f"{PROVIDER}/{_profile_name(model)}"
    status = getattr(exc, "status", None)
    error: Exception
    if isinstance(exc, ProfileNotFoundError):
        error = NotFoundError(message, model=name, llm_provider=PROVIDER)
    elif isinstance(exc, ConfigError):
        error = BadRequestError(message, model=name, llm_provider=PROVIDER)
    elif isinstance(exc, StreamInterruptedError):
        error = ServiceUnavailableError(message, llm_provider=PROVIDER, model=name)
    elif (
        isinstance(exc, NoBackendAvailableError)
        and not exc.retryable
        and {f.kind for f in exc.failures} <= {FailureKind.REQUEST, FailureKind.FINAL}
    ):
        if status == 404:
            error = NotFoundError(message, model=name, llm_provider=PROVIDER)
        else:
            error = BadRequestError(message, model=name, llm_provider=PROVIDER)
    elif status == 429:
        error = RateLimitError(message, llm_provider=PROVIDER, model=name)
    elif status == 401:
        error = AuthenticationError(message, llm_provider=PROVIDER, model=name)
    elif status == 403:
        error = PermissionDeniedError(
            message, llm_provider=PROVIDER, model=name, response=_response(403)
        )
    else:
        # Every member down, failing or open: temporarily unavailable, worth retrying later.
        error = ServiceUnavailableError(message, llm_provider=PROVIDER, model=name)
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, NoBackendAvailableError) and retry_after is not None:
        # The proxy sends an exception's `headers` with its error response.
        setattr(error, "headers", {"retry-after": str(max(1, math.ceil(retry_after)))})  # noqa: B010
    return error


def _response(status: int) -> Any:
    import httpx

    return httpx.Response(status, request=httpx.Request("POST", "http://lbprovider.invalid"))


def _provider(model: str) -> Any:
    from lbprovider.provider_cache import cached_provider

    name = _profile_name(model)
    allowed = os.environ.get(ALLOWED_ENV, "").strip()
    if allowed and name not in {n.strip() for n in allowed.split(",")}:
        raise NotFoundError(
            f"load balancer {name!r} is not served here (not in {ALLOWED_ENV})",
            model=f"{PROVIDER}/{name}",
            llm_provider=PROVIDER,
        )
    try:
        return cached_provider(name)
    except LBError as exc:
        raise to_litellm_error(exc, model) from exc


def _keep_model_name(kwargs: Mapping[str, Any]) -> None:
    """Ask the LiteLLM proxy to pass our ``model`` (the serving member) through.

    The proxy restamps every response's ``model`` with the name the client asked for,
    unless the request's metadata carries the flag LiteLLM's own complexity router sets
    for the model it picked; the proxy's Router also overwrites
    ``x-litellm-attempted-fallbacks`` with its own count (0), so that header cannot do
    it.  The metadata dict is the proxy's request data, shared with this call.
    """
    key = getattr(litellm_constants, "RETURN_RAW_MODEL_NAME_METADATA_KEY", None)
    params = kwargs.get("litellm_params") or {}
    for name in ("metadata", "litellm_metadata"):
        metadata = params.get(name)
        if key and isinstance(metadata, dict):
            metadata[key] = True


def _report(trace: RequestTrace) -> dict[str, Any]:
    """Response headers saying who served, and whether the request failed over."""
    headers: dict[str, Any] = {}
    if trace.backend is not None:
        headers["x-lbprovider-backend"] = trace.backend
    fallbacks = len({f.member for f in trace.failures})
    if fallbacks:
        headers["x-litellm-attempted-fallbacks"] = fallbacks
    return headers


def _stream_chunk(chunk: Chunk, trace: RequestTrace) -> ModelResponseStream:
    """One engine chunk as litellm's stream chunk, naming the serving member."""
    delta: dict[str, Any] = {"role": "assistant", "content": chunk.text or None}
    if chunk.tool_calls:
        delta["tool_calls"] = [
            {
                "index": d.index,
                "id": d.id,
                "type": "function",
                "function": {"name": d.name, "arguments": d.arguments},
            }
            for d in chunk.tool_calls
        ]
    choice = StreamingChoices(index=0, delta=Delta(**delta), finish_reason=chunk.finish_reason)
    out = ModelResponseStream(choices=[choice], model=chunk.model or trace.model)
    if chunk.usage is not None:
        out.usage = _usage(chunk)
    out._hidden_params["additional_headers"] = _report(trace)
    return out


def _usage(chunk: Chunk) -> Usage:
    assert chunk.usage is not None
    return Usage(
        prompt_tokens=chunk.usage.prompt_tokens,
        completion_tokens=chunk.usage.completion_tokens,
        total_tokens=chunk.usage.total_tokens,
    )


@dataclass
class _Opened:
    """A request routed up to its first chunk: nothing can fail before the host has it."""

    model: str
    first: Chunk | None
    chunks: AsyncIterator[Chunk]
    trace: RequestTrace

    async def rest(self) -> AsyncIterator[ModelResponseStream]:
        """Every chunk as litellm's.  A finish reason without content is held back to
        the end: OpenAI sends the usage after it, but litellm's stream wrapper drops a
        custom provider's chunks without content once it has seen a finish reason."""
        finish: Chunk | None = None
        try:
            if self.first is not None:
                yield _stream_chunk(self.first, self.trace)
            async for chunk in self.chunks:
                if chunk.finish_reason is not None and not chunk.is_content:
                    finish = replace(chunk, usage=None)
                    if chunk.usage is None:
                        continue
                    chunk = Chunk(usage=chunk.usage, model=chunk.model)
                yield _stream_chunk(chunk, self.trace)
            if finish is not None:
                yield _stream_chunk(finish, self.trace)
        except LBError as exc:
            raise to_litellm_error(exc, self.model) from exc
        finally:
            close = getattr(self.chunks, "aclose", None)
            if close is not None:
                await close()


async def _open(model: str, messages: list[Any], optional: Mapping[str, Any] | None) -> _Opened:
    trace = RequestTrace()
    chunks = _provider(model).stream_traced(messages, trace, **_params(optional))
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except LBError as exc:
        raise to_litellm_error(exc, model) from exc
    return _Opened(model, first, chunks, trace)


def _in_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
        """Non-streaming: one whole answer from one member, in one ModelResponse."""
        trace = RequestTrace()
        provider = _provider(model)
        try:
            result = await provider.complete_traced(
                messages, trace, **_params(kwargs.get("optional_params"))
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
        response.model = result.model or f"{PROVIDER}/{_profile_name(model)}"
        response.created = int(time.time())
        if result.usage is not None:
            response.usage = Usage(  # type: ignore[attr-defined]
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                total_tokens=result.usage.total_tokens,
            )
        response._hidden_params["additional_headers"] = _report(trace)
        response._hidden_params["lbprovider_backend"] = result.backend
        response._hidden_params["lbprovider_model"] = result.model
        _keep_model_name(kwargs)
        return response

    def streaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> Iterator[ModelResponseStream]:
        """Streaming, from synchronous code: opened to its first chunk before returning."""
        opened = run(_open(model, messages, kwargs.get("optional_params")))
        _keep_model_name(kwargs)
        return iterate(opened.rest)

    # litellm calls this synchronously, inside `completion()`, which `acompletion` runs in
    # a worker thread: so the request is routed to its first chunk here, on lbprovider's
    # background loop, and a failure raises from `acompletion` itself — before the host
    # has a stream to start.  (Called inside a running loop, it cannot block: it falls
    # back to opening lazily, as the base class does.)
    def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[ModelResponseStream]:
        """Streaming: text and tool-call deltas as they come, usage on the last chunk."""
        optional = kwargs.get("optional_params")
        if _in_a_loop():
            return _lazily(model, messages, optional)
        opened = run(_open(model, messages, optional))
        _keep_model_name(kwargs)
        return aiterate(opened.rest)


async def _lazily(
    model: str, messages: list[Any], optional: Mapping[str, Any] | None
) -> AsyncIterator[ModelResponseStream]:
    opened = await _open(model, messages, optional)
    async for chunk in opened.rest():
        yield chunk


handler = LBHandler()


def register() -> None:
    """Make ``litellm.completion(model="lb/NAME", ...)`` route through lbprovider."""
    entry: Any = {"provider": PROVIDER, "custom_handler": handler}
    if not any(p.get("provider") == PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map.append(entry)
    from litellm.utils import custom_llm_setup

    custom_llm_setup()  # type: ignore[no-untyped-call]
