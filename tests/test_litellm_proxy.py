"""The real LiteLLM proxy with docs/litellm-proxy.yaml in front of lbprovider, reached with
the official `openai` client, served by a sim backend after a failover (SPEC §10)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import WriteProfile, lb, member

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("both_transports")]
openai = pytest.importorskip("openai")
pytest.importorskip("litellm.proxy.proxy_server", reason="litellm[proxy] extras not installed")

CONFIG = Path(__file__).resolve().parent.parent / "docs" / "litellm-proxy.yaml"


def free_port() -> int:
    """An unused port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backends(write_profile: WriteProfile) -> Iterator[tuple[SimServer, SimServer]]:
    """The profile `coding` (the one the example config names): a failing member, then a
    healthy one."""
    with serve_in_thread("status=503") as bad, serve_in_thread("text=via the proxy") as good:
        write_profile("bad", member(base_url=bad.url))
        write_profile("good", member(base_url=good.url))
        write_profile("coding", lb(["bad", "good"], failover_retry_count=1))
        yield bad, good


@pytest.fixture
def proxy(
    backends: tuple[SimServer, SimServer], isolated: Path, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """The LiteLLM proxy on 127.0.0.1, started with the example config; (base URL, key)."""
    port, key = free_port(), "sk-" + secrets.token_hex(24)
    env = {
        **os.environ,
        "LBPROVIDER_HOME": str(isolated),
        "LITELLM_MASTER_KEY": key,
        "LBPROVIDER_STATE": "memory://",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }
    log = (tmp_path / "proxy.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "litellm.proxy.proxy_cli",
            "--config",
            str(CONFIG),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "proxy.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health/liveliness", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("proxy did not start in 90 s") from None
                time.sleep(0.5)  # polling a starting server, not a timing assertion
        yield base, key
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_openai_client_streams_through_proxy(
    proxy: tuple[str, str], backends: tuple[SimServer, SimServer]
) -> None:
    """A streamed chat completion through the proxy is served by the healthy member."""
    base, key = proxy
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model="coding", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "via the proxy"
    bad, good = backends
    assert (bad.hits, good.hits) == (1, 1)
    assert key not in good.api_keys  # the proxy's key never reaches a member
