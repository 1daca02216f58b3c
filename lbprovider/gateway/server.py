"""Starting and stopping the gateway (SPEC §11.1): bind, say so, drain on a signal.

:class:`GatewayServer` runs the application on one event loop with aiohttp's runner
(``handler_cancellation=True``: a client that goes away cancels its handler at once,
even while it waits for a first chunk, which closes the upstream and counts against no
member).  :func:`run` is ``lbprovider serve``: it prints one line on stderr once the
gateway answers, and on ``SIGTERM`` / ``SIGINT`` stops accepting, lets the streams in
flight finish for up to ``drain_s``, and returns (exit 0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from lbprovider.config import TransportKind
from lbprovider.gateway.app import Gateway, Settings, build_app
from lbprovider.gateway.keys import KEY_ENV, ServeKeys
from lbprovider.gateway.metrics import GatewayMetrics
from lbprovider.gateway.served import Alias, Served
from lbprovider.paths import home_dir
from lbprovider.profiles.store import ProfileStore

__all__ = ["GatewayServer", "ServeOptions", "run"]

logger = logging.getLogger("lbprovider.gateway")


@dataclass
class ServeOptions:
    """The ``lbprovider serve`` options."""

    host: str = "127.0.0.1"
    port: int = 4000
    profiles: Sequence[str] = ()
    aliases: Sequence[Alias] = ()
    default: str | None = None
    key_file: Path | None = None
    allow_origins: Sequence[str] = ()
    max_body_mb: float = 32.0
    drain_s: float = 30.0
    # Passed to every provider built (a state store, a clock); not ``on_event``, which
    # the gateway's metrics take.
    provider_kwargs: Mapping[str, Any] = field(default_factory=dict)


class GatewayServer:
    """One running gateway; an async context manager (tests run it in process)."""

    def __init__(
        self,
        options: ServeOptions,
        *,
        profiles: ProfileStore | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        env = os.environ if env is None else env
        keys = ServeKeys.load(key_file=options.key_file, home=home_dir(env), env=env)
        metrics = GatewayMetrics()
        served = Served(
            profiles or ProfileStore(env=env),
            names=list(options.profiles),
            aliases=list(options.aliases),
            default=options.default,
            env=env,
            # Every provider reports its attempts to this gateway's metrics.
            provider_kwargs={**options.provider_kwargs, "on_event": metrics.on_event},
        )
        self.gateway = Gateway(
            served, Settings(keys, frozenset(options.allow_origins), options.max_body_mb), metrics
        )
        self._runner: web.AppRunner | None = None
        self.port = options.port

    @property
    def served(self) -> Served:
        """The served load balancers."""
        return self.gateway.served

    @property
    def keys(self) -> ServeKeys:
        """The accepted keys (and where they came from)."""
        return self.gateway.settings.keys

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.options.host}:{self.port}"

    async def start(self) -> GatewayServer:
        """Check the served load balancers, warm litellm if one needs it, and listen."""
        for name in self.options.profiles:
            self.served.provider(name)  # a --profile that cannot load fails the start
        await self._warm_up()
        self._runner = web.AppRunner(
            build_app(self.gateway),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.options.drain_s,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def _warm_up(self) -> None:
        """Import and warm litellm before reporting ready, when a served load balancer
        has a litellm member (and only then: native members never import it)."""
        for name in self.served.served():
            try:
                provider = self.served.provider(name)
            except Exception:  # a broken profile answers its error per request
                continue
            if any(m.transport is TransportKind.LITELLM for m in provider.config.members):
                await provider.warm_up()

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (up to ``drain_s``), stop."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> GatewayServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    for name in ("lbprovider.gateway", "lbprovider.gateway.access"):
        log = logging.getLogger(name)
        log.setLevel(logging.INFO)
    gateway = logging.getLogger("lbprovider.gateway")
    gateway.addHandler(handler)
    gateway.propagate = False


def run(options: ServeOptions) -> None:
    """``lbprovider serve``: serve until SIGTERM or SIGINT, then drain and return."""
    _log_to_stderr()

    async def main() -> None:
        server = GatewayServer(options)
        keys = server.keys
        if keys.generated is not None:
            print(
                f"lbprovider: generated a gateway key in {keys.generated} (mode 0600); "
                f"clients use it: export ANTHROPIC_AUTH_TOKEN=$(cat {keys.generated}) "
                f"or {KEY_ENV}=$(cat {keys.generated})",
                file=sys.stderr,
            )
        else:
            print(f"lbprovider: gateway key from {keys.source}", file=sys.stderr)
        await server.start()
        names = server.served.served()
        print(
            f"lbprovider serving {len(names)} load balancers on {server.url}"
            + (f" ({', '.join(names)})" if names else ""),
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        inflight = server.gateway.inflight
        print(
            f"lbprovider: stopping; {inflight} request(s) in flight get up to "
            f"{options.drain_s:g} s to finish",
            file=sys.stderr,
            flush=True,
        )
        await server.close()

    asyncio.run(main())
