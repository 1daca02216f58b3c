"""The ``llm`` plugin (SPEC §10): ``llm -m lb/NAME`` and ``llm lb ...``.

Registered through the entry point group ``llm``.  Every ``llm`` invocation imports
every plugin, so importing this module imports neither litellm nor the routing
engine, and ``llm lb`` is a lazy click group that loads ``lbprovider.cli`` only when
it is used.  ``register_models`` runs often; models are cached per profile file and
its modification time.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import llm
from cachetools import LRUCache
from pydantic import Field

__all__ = ["LBAsyncModel", "LBModel", "register_commands", "register_models"]

PREFIX = "lb/"

# (path, mtime_ns) -> the load-balancer name it defines, or None for any other file
_profile_kinds: LRUCache[tuple[str, int], str | None] = LRUCache(maxsize=4096)
_models: LRUCache[str, tuple[LBModel, LBAsyncModel]] = LRUCache(maxsize=1024)


def _loadbalancer_files() -> dict[str, Path]:
    """Load-balancer profile names on the search path (first hit wins), cheaply."""
    from lbprovider.paths import profile_search_dirs

    found: dict[str, Path] = {}
    seen: set[str] = set()
    for directory in profile_search_dirs():
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.name.endswith(".json") or not entry.is_file():
                continue
            name = entry.name[:-5]
            if name in seen:
                continue
            seen.add(name)
            key = (entry.path, entry.stat().st_mtime_ns)
            if key not in _profile_kinds:
                _profile_kinds[key] = _lb_name(Path(entry.path), name)
            if _profile_kinds[key] is not None:
                found[name] = Path(entry.path)
    return found


def _lb_name(path: Path, name: str) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None  # a broken file is reported by `llm lb profiles validate`, not here
    is_lb = isinstance(data, dict) and str(data.get("type", "")).lower() == "loadbalancer"
    return name if is_lb else None


@llm.hookimpl
def register_models(register: Any) -> None:
    """Register ``lb/NAME`` (sync and async) for every load-balancer profile."""
    for name in _loadbalancer_files():
        if name not in _models:
            _models[name] = (LBModel(name), LBAsyncModel(name))
        register(*_models[name])


class _LazyGroup(click.Group):
    """``llm lb``: loads the real command group only when it is used."""

    def _real(self) -> click.Group:
        from lbprovider.cli import cli

        return cli

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._real().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        return self._real().invoke(ctx)


@llm.hookimpl
def register_commands(cli: click.Group) -> None:
    """Mount the lbprovider commands as ``llm lb``."""
    cli.add_command(
        _LazyGroup(
            name="lb",
            help="Load-balanced models: profiles, stats, bench (the lbprovider commands).",
        )
    )


# -- the models --------------------------------------------------------------------------


class _Options(llm.Options):
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature")
    max_tokens: int | None = Field(default=None, gt=0, description="Maximum tokens to generate")
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus sampling")


def openai_messages(prompt: Any) -> list[dict[str, Any]]:
    """``prompt.messages`` (the whole conversation, system included) in OpenAI's format."""
    out: list[dict[str, Any]] = []
    for message in prompt.messages:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in message.parts:
            kind = type(part).__name__
            if kind == "TextPart":
                texts.append(part.text)
            elif kind == "ToolCallPart" and not part.server_executed:
                calls.append(
                    {
                        "id": part.tool_call_id,
                        "type": "function",
                        "function": {"name": part.name, "arguments": json.dumps(part.arguments)},
                    }
                )
            elif kind == "ToolResultPart" and not part.server_executed:
                out.append(
                    {"role": "tool", "tool_call_id": part.tool_call_id, "content": part.output}
                )
        if message.role == "tool":
            continue
        entry: dict[str, Any] = {"role": message.role, "content": "".join(texts) or None}
        if calls:
            entry["tool_calls"] = calls
        if entry["content"] is not None or calls:
            out.append(entry)
    return out


class _LBShared:
    """What the sync and async models share: naming, options, request building."""

    can_stream = True
    supports_tools = True
    supports_schema = False
    attachment_types: ClassVar[set[str]] = set()
    Options = _Options

    def __init__(self, name: str) -> None:
        self.profile_name = name
        self.model_id = f"{PREFIX}{name}"

    def __str__(self) -> str:
        return f"lbprovider: {self.model_id}"

    def _provider(self) -> Any:
        from lbprovider.errors import LBError
        from lbprovider.provider_cache import cached_provider

        try:
            return cached_provider(self.profile_name)
        except LBError as exc:
            raise llm.ModelError(str(exc)) from exc

    @staticmethod
    def _params(prompt: Any) -> dict[str, Any]:
        params = {k: v for k, v in dict(prompt.options).items() if v is not None}
        if prompt.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description or None,
                        "parameters": tool.input_schema,
                    },
                }
                for tool in prompt.tools
            ]
        return params

    async def _stream(self, prompt: Any, response: Any, stream: bool) -> AsyncGenerator[str, None]:
        """The engine's chunks as text; usage, serving member and tool calls recorded.

        ``stream`` False (``llm --no-stream``): the whole answer from one member, so a
        stream that breaks half-way fails over instead of failing (SPEC §3.4).
        """
        from lbprovider.errors import LBError

        provider = self._provider()
        calls: dict[int, dict[str, Any]] = {}
        usage = None
        backend = model = None
        messages, params = openai_messages(prompt), self._params(prompt)
        try:
            chunks = (
                provider.stream(messages, **params)
                if stream
                else _whole(provider, messages, params)
            )
            async for chunk in chunks:
                backend, model = chunk.backend or backend, chunk.model or model
                usage = chunk.usage or usage
                for delta in chunk.tool_calls:
                    call = calls.setdefault(delta.index, {"id": None, "name": "", "args": ""})
                    call["id"] = delta.id or call["id"]
                    call["name"] += delta.name or ""
                    call["args"] += delta.arguments
                if chunk.text:
                    yield chunk.text
        except LBError as exc:
            raise llm.ModelError(str(exc)) from exc
        if backend:
            response.set_resolved_model(f"{backend} ({model})")
        if usage is not None:
            response.set_usage(input=usage.prompt_tokens, output=usage.completion_tokens)
        for index in sorted(calls):
            call = calls[index]
            try:
                arguments = json.loads(call["args"] or "{}")
            except ValueError:
                arguments = {"_raw": call["args"]}
            response.add_tool_call(
                llm.ToolCall(name=call["name"], arguments=arguments, tool_call_id=call["id"])
            )


async def _whole(provider: Any, messages: Any, params: dict[str, Any]) -> AsyncGenerator[Any, None]:
    """A non-streaming answer, as the chunks the streaming path reads."""
    from lbprovider.transport import Chunk, ToolCallDelta

    result = await provider.complete(messages, **params)
    calls = tuple(
        ToolCallDelta(
            index=i,
            id=call.get("id"),
            name=call["function"]["name"],
            arguments=call["function"]["arguments"],
        )
        for i, call in enumerate(result.tool_calls)
    )
    yield Chunk(
        text=result.text,
        tool_calls=calls,
        finish_reason=result.finish_reason,
        usage=result.usage,
        backend=result.backend,
        model=result.model,
    )


class LBModel(_LBShared, llm.Model):  # type: ignore[misc]
    """The synchronous ``lb/NAME`` model."""

    def execute(
        self, prompt: Any, stream: bool, response: Any, conversation: Any = None
    ) -> Iterator[str]:
        """Run the request on lbprovider's background loop and stream its text."""
        from lbprovider.integrations._bridge import iterate

        yield from iterate(lambda: self._stream(prompt, response, stream))


class LBAsyncModel(_LBShared, llm.AsyncModel):  # type: ignore[misc]
    """The asynchronous ``lb/NAME`` model (``llm --async``)."""

    async def execute(
        self, prompt: Any, stream: bool, response: Any, conversation: Any = None
    ) -> AsyncGenerator[str, None]:
        """Stream the request's text."""
        async for text in self._stream(prompt, response, stream):
            yield text
