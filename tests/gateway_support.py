"""Running `lbprovider serve` in tests: in process (a fixture) or as a real process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lbprovider.gateway.server import GatewayServer, ServeOptions

GW_KEY = "gw-test-key-0123456789abcdef"

StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture
async def gateway(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StartGateway]:
    """Start in-process gateways on 127.0.0.1 port 0 (memory state, key GW_KEY)."""
    monkeypatch.setenv("LBPROVIDER_STATE", "memory://")
    monkeypatch.setenv("LBPROVIDER_SERVE_KEY", GW_KEY)
    started: list[GatewayServer] = []

    async def start(**options: Any) -> GatewayServer:
        options.setdefault("drain_s", 1.0)
        server = GatewayServer(ServeOptions(port=0, **options))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


_READY = re.compile(r"serving \d+ load balancers on (http://127\.0\.0\.1:\d+)")


@contextlib.contextmanager
def serve_process(
    env: dict[str, str], *args: str, python_args: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """`lbprovider serve --port 0 ARGS` in a new process: (process, url, stderr file),
    once it has said it is ready; killed at the end if still running."""
    err_path = Path(env["LBPROVIDER_HOME"]) / f"serve-{time.monotonic_ns()}.err"
    err_path.parent.mkdir(parents=True, exist_ok=True)
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, *python_args, "-m", "lbprovider.cli", "serve", "--port", "0", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        url = None
        deadline = time.monotonic() + 60  # a cold start on a loaded machine
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            match = _READY.search(err_path.read_text())
            url = match.group(1) if match else None
            if url is None:
                # Wait on the process itself (it may exit), a little at a time.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
        assert url is not None, err_path.read_text()[-2000:]
        yield proc, url, err_path
    finally:
        if proc.poll() is None:  # stop it as an operator would: it drains and flushes
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
