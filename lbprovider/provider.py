"""``LoadBalancingProvider``: the public API (SPEC §9). It composes; it decides nothing."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbprovider import ledger
from lbprovider.clock import Clock, Sleep, SystemClock, real_sleep
from lbprovider.config import LoadBalancerConfig
from lbprovider.errors import ConfigError
from lbprovider.events import EventHook, log_event
from lbprovider.profiles.store import ProfileStore
from lbprovider.routing import RequestTrace, Router
from lbprovider.state import StateStore, default_store
from lbprovider.transport import Chunk, ToolCallDelta, Transport, TransportSet, Usage, Wire

__all__ = ["LoadBalancingProvider", "RequestTrace", "Result"]


@dataclass
class Result:
    """A whole answer (``complete()``)."""

    text: str
    backend: str | None
    model: str | None
    usage: Usage | None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    failover: bool = False
    thinking: str = ""  # reasoning text, when the member thought aloud (Anthropic)
    signature: str = ""  # the signature closing that thinking
    # The member's own events, when the request was passed through in its API.
    wire: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The ``chat --json`` object: text, backend, model, failover, attempts, usage."""
        usage = self.usage.to_dict() if self.usage is not None else None
        out: dict[str, Any] = {
            "text": self.text,
            "backend": self.backend,
            "model": self.model,
            "failover": self.failover,
            "attempts": self.attempts,
            "usage": usage,
        }
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def _merge_tool_calls(deltas: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        call = calls.setdefault(
            d.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if d.id:
            call["id"] = d.id
        if d.name:
            call["function"]["name"] += d.name
        call["function"]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


class LoadBalancingProvider:
    """Routes chat requests over the members of one load-balancer profile.

    Collaborators are injectable: ``store`` (state shared across requests and
    processes), ``transport`` (one transport for every member, replacing the choice
    each member's ``transport`` setting makes — tests pass
    :class:`lbprovider.testing.ScriptedTransport`), ``clock`` and ``sleep`` (time),
    ``on_event`` (a hook receiving one event per attempt, skip, failover, fail-back and
    breaker change; logging is always subscribed; a hook that raises is logged and
    ignored), ``rng`` (the jitter of rate-limit backoff).
    """

    def __init__(
        self,
        config: LoadBalancerConfig,
        *,
        store: StateStore | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        on_event: EventHook | None = None,
        rng: random.Random | None = None,
    ) -> None:
        # A member whose transport is not installed is a configuration error, found
        # before the state store opens or any request starts.
        transports = TransportSet(transport)
        transports.check(config.members)
        self.config = config
        self.store = store if store is not None else default_store()
        self.clock = clock or SystemClock()
        hooks: list[EventHook] = [log_event] + ([on_event] if on_event else [])
        self._router = Router(
            config,
            store=self.store,
            transports=transports,
            clock=self.clock,
            sleep=sleep or real_sleep,
            hooks=hooks,
            rng=rng,
        )

    @classmethod
    def from_profile(
        cls, name: str, *, profiles: ProfileStore | None = None, **kwargs: Any
    ) -> LoadBalancingProvider:
        """Load load-balancer profile ``name`` from the profile store (SPEC §2)."""
        return cls((profiles or ProfileStore()).load_loadbalancer(name), **kwargs)

    @property
    def name(self) -> str:
        """The load-balancer profile's name."""
        return self.config.name

    def stream(
        self, messages: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> AsyncGenerator[Chunk, None]:
        """Stream an answer as chunks (``chunk.text``, ``chunk.tool_calls``, ``chunk.backend``).

        Use as ``async for chunk in lb.stream(messages, temperature=0.2)``. Keyword
        arguments (temperature, max_tokens, tools, ...) go to the backend. Cancelling,
        or closing the generator (``aclose()``, ``contextlib.aclosing``), closes the
        upstream stream. (The router's generator is returned as is: one layer less
        per chunk.)
        """
        return self._router.route(messages, kwargs, RequestTrace())

    def stream_traced(
        self,
        messages: Sequence[Mapping[str, Any]],
        trace: RequestTrace,
        *,
        wire: Wire | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[Chunk, None]:
        """:meth:`stream`, filling ``trace`` as it goes: attempts, the members that failed
        or were skipped, the serving member and model, usage (hosts report these).
        ``wire``: the client's own request, passed through as it is to members that speak
        its API (the gateway, SPEC §4.2)."""
        return self._router.route(messages, kwargs, trace, wire=wire)

    async def complete(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Result:
        """The whole answer, from one member, with the serving backend, attempts and usage.

        Nothing reaches the caller before the end, so a stream that breaks half-way fails
        over to the next member like any other failure (SPEC §3.4).
        """
        return await self.complete_traced(messages, RequestTrace(), **kwargs)

    async def complete_traced(
        self,
        messages: Sequence[Mapping[str, Any]],
        trace: RequestTrace,
        *,
        wire: Wire | None = None,
        **kwargs: Any,
    ) -> Result:
        """:meth:`complete`, filling ``trace`` as it goes (see :meth:`stream_traced`)."""
        text: list[str] = []
        thinking: list[str] = []
        signature = ""
        tools: list[ToolCallDelta] = []
        events: list[dict[str, Any]] = []
        finish = None
        route = self._router.route(messages, kwargs, trace, streaming=False, wire=wire)
        async with contextlib.aclosing(route) as chunks:
            async for chunk in chunks:
                text.append(chunk.text)
                thinking.append(chunk.thinking)
                signature = chunk.signature or signature
                tools.extend(chunk.tool_calls)
                events.extend(chunk.wire)
                finish = chunk.finish_reason or finish
        return Result(
            text="".join(text),
            backend=trace.backend,
            model=trace.model,
            usage=trace.usage,
            finish_reason=finish,
            tool_calls=_merge_tool_calls(tools),
            attempts=trace.attempts,
            failover=trace.failover,
            thinking="".join(thinking),
            signature=signature,
            wire=events,
        )

    async def warm_up(self) -> None:
        """Do every member transport's one-time set-up now (a gateway does, before it
        says it is ready, when a member uses litellm)."""
        transports = self._router.transports
        for transport in {
            id(t): t for t in map(transports.for_member, self.config.members)
        }.values():
            await transport.warm_up()

    def stats(self) -> dict[str, Any]:
        """The stats report of SPEC §6 (the ``stats --json`` shape)."""
        return ledger.report(self.config.outline, self._router.ledger, self.clock.now())

    def reset_stats(self) -> None:
        """Clear counters (breakers and TPM windows stay)."""
        ledger.reset_counters(self._router.ledger, self.config.name)

    def bench(self, member: str, duration_s: float) -> None:
        """Take ``member`` out of rotation by hand for ``duration_s`` seconds."""
        ledger.bench(self._router.ledger, self._member_name(member), duration_s, self.clock.now())

    def unbench(self, member: str) -> None:
        """Put ``member`` back (closes its breaker)."""
        ledger.unbench(self._router.ledger, self._member_name(member))

    def _member_name(self, member: str) -> str:
        if member not in self.config.member_names:
            raise ConfigError(
                f"{member!r} is not a member of {self.config.name!r}",
                field="MEMBER",
                hint=f"members: {', '.join(self.config.member_names)}",
            )
        return member
