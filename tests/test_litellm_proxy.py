"""The real LiteLLM proxy, started with docs/litellm-proxy.yaml, in front of lbprovider
(SPEC §10): every endpoint a coding assistant uses, streaming and not, reports the
member that served and answers a real status when nothing can serve."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbprovider.sim import SimServer, serve_in_thread
from tests.conftest import OPEN_AT_FIRST_FAILURE, WriteProfile, lb, member, member_provider

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("both_transports")]
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
yaml = pytest.importorskip("yaml")
pytest.importorskip("litellm.proxy.proxy_server", reason="litellm[proxy] extras not installed")

CONFIG = Path(__file__).resolve().parent.parent / "docs" / "litellm-proxy.yaml"
HI = [{"role": "user", "content": "hi"}]
# Load balancers the test adds to the documented config: one per way of failing.
FAILING = {"down": "status=503,retry_after=7", "keys": "status=401", "rejects": "status=400"}


def free_port() -> int:
    """An unused port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backends(write_profile: WriteProfile) -> Iterator[dict[str, SimServer]]:
    """`coding` (the documented profile): a failing member, then a healthy one; and one
    load balancer per failure mode."""
    with (
        serve_in_thread("status=503") as bad,
        serve_in_thread("text=via the proxy") as good,
        serve_in_thread(FAILING["down"]) as down,
        serve_in_thread(FAILING["keys"]) as keys,
        serve_in_thread(FAILING["rejects"]) as rejects,
    ):
        servers = {"bad": bad, "good": good, "down": down, "keys": keys, "rejects": rejects}
        for name, server in servers.items():
            write_profile(name, member(base_url=server.url, model=f"{name}-model"))
        write_profile("coding", lb(["bad", "good"], failover_retry_count=1))
        for name in FAILING:
            write_profile(f"only-{name}", lb([name], policy="roundrobin", failover_retry_count=1))
        yield servers


@contextlib.contextmanager
def proxy_process(config: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """A LiteLLM proxy on 127.0.0.1 with ``config``; yields its base URL."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "litellm.proxy.proxy_cli",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    with urllib.request.urlopen(f"{base}/health/liveliness", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise AssertionError("proxy did not start in 120 s") from None
                    # Wait on the process itself (it may exit), a little at a time.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(0.5)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def proxy_env(home: Path, key: str, state: str = "memory://") -> dict[str, str]:
    """The proxy's environment: lbprovider's home and state, the master key, offline."""
    return {
        **os.environ,
        "LBPROVIDER_HOME": str(home),
        "LITELLM_MASTER_KEY": key,
        "LBPROVIDER_STATE": state,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }


@pytest.fixture
def proxy(
    backends: dict[str, SimServer], isolated: Path, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """The LiteLLM proxy on 127.0.0.1 with the documented config (plus the failing load
    balancers); (base URL, key)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["model_list"] += [
        {"model_name": name, "litellm_params": {"model": f"lb/only-{name}"}} for name in FAILING
    ]
    config_path = tmp_path / "proxy.yaml"
    config_path.write_text(yaml.safe_dump(config))
    key = "sk-" + secrets.token_hex(24)
    with proxy_process(config_path, proxy_env(isolated, key), tmp_path / "proxy.log") as base:
        yield base, key


def body_for(endpoint: str, model: str, stream: bool) -> dict[str, Any]:
    """A minimal request in each endpoint's own format."""
    if endpoint == "/v1/chat/completions":
        return {"model": model, "messages": HI, "stream": stream}
    if endpoint == "/v1/messages":
        return {"model": model, "max_tokens": 64, "messages": HI, "stream": stream}
    return {"model": model, "input": "hi", "stream": stream}


ENDPOINTS = ("/v1/chat/completions", "/v1/messages", "/v1/responses")


def call(base: str, key: str, endpoint: str, model: str, stream: bool) -> httpx.Response:
    """One request, read whole (a stream's events included)."""
    return httpx.post(
        f"{base}{endpoint}",
        json=body_for(endpoint, model, stream),
        headers={"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"},
        timeout=60,
    )


def test_proxy_serves_and_names_the_serving_member(
    proxy: tuple[str, str], backends: dict[str, SimServer]
) -> None:
    """Through the documented config: the openai client streams after a failover; chat
    completions, messages and responses, streaming or not, are served by the healthy
    member and name it; every Claude model name reaches the load balancer; Codex's
    hosted web_search tool never reaches a member; a wrong proxy key is refused."""
    base, key = proxy
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(model="coding", messages=HI, stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "via the proxy"
    # Every chunk with content names the member (LiteLLM's closing chunk, the name asked for).
    good = f"{member_provider()}/good-model"
    assert {c.model for c in chunks if c.choices[0].delta.content} == {good}
    assert (backends["bad"].hits, backends["good"].hits) == (1, 1)
    assert key not in backends["good"].api_keys  # the proxy's key never reaches a member

    for endpoint in ENDPOINTS:
        for streamed in (False, True):
            reply = call(base, key, endpoint, "coding", streamed)
            assert reply.status_code == 200, (endpoint, streamed, reply.text[:500])
            assert "via" in reply.text
            # LiteLLM's Messages and Responses adapters build their stream events with
            # the name asked for (docs/hosts.md): only a chat-completions stream names it.
            if not streamed or endpoint == "/v1/chat/completions":
                assert good in reply.text, (endpoint, streamed)
    plain = call(base, key, "/v1/chat/completions", "coding", False)
    assert plain.json()["model"] == good
    assert plain.headers["llm_provider-x-lbprovider-backend"] == "good"

    for name in ("claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-4-1"):
        reply = call(base, key, "/v1/messages", name, False)
        assert reply.status_code == 200, (name, reply.text[:300])
        assert reply.json()["content"][0]["text"] == "via the proxy"

    reply = httpx.post(
        f"{base}/v1/responses",
        json={"model": "coding", "input": "hi", "tools": [{"type": "web_search"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text[:300]
    sent = backends["good"].requests[-1]
    assert not any(t.get("type") == "web_search" for t in sent.get("tools") or [])

    # Without a database, LiteLLM answers a non-master key "No connected db." (hosts.md).
    wrong = call(base, "sk-not-the-master-key", "/v1/chat/completions", "coding", False)
    assert wrong.status_code in (400, 401)
    assert "No connected db" in json.dumps(wrong.json())


def test_every_endpoint_answers_a_real_status(proxy: tuple[str, str]) -> None:
    """Nothing can serve: every endpoint, streaming or not, answers the status itself —
    never a 200 with an error inside the stream — and a 503 says when to come back."""
    base, key = proxy
    for model, status in (("down", 503), ("keys", 401), ("rejects", 400)):
        for endpoint in ENDPOINTS:
            for streamed in (False, True):
                reply = call(base, key, endpoint, model, streamed)
                assert reply.status_code == status, (model, endpoint, streamed, reply.text[:300])
                # LiteLLM's Anthropic route drops an error's own headers (docs/hosts.md).
                if status == 503 and endpoint != "/v1/messages":
                    assert reply.headers["retry-after"] == "7", (endpoint, streamed)


def test_two_replicas_share_breakers_through_redis(
    write_profile: WriteProfile, isolated: Path, tmp_path: Path, valkey: Any
) -> None:
    """Two proxy replicas on one Redis: a breaker opened through one is honoured by the
    other on its next request (docs/deploy.md)."""
    with serve_in_thread("status=503") as bad, serve_in_thread("text=via replica") as good:
        write_profile("bad", member(base_url=bad.url))
        write_profile("good", member(base_url=good.url))
        write_profile("coding", lb(["bad", "good"], **OPEN_AT_FIRST_FAILURE))
        write_profile("coding2", lb(["bad", "good"], circuit_breaker_enabled=True))
        config = yaml.safe_load(CONFIG.read_text())
        config["model_list"].append(
            {"model_name": "coding2", "litellm_params": {"model": "lb/coding2"}}
        )
        config_path = tmp_path / "proxy.yaml"
        config_path.write_text(yaml.safe_dump(config))
        key = "sk-" + secrets.token_hex(24)
        env = proxy_env(isolated, key, state=valkey.url)
        with (
            proxy_process(config_path, env, tmp_path / "one.log") as one,
            proxy_process(config_path, env, tmp_path / "two.log") as two,
        ):
            first = call(one, key, "/v1/chat/completions", "coding", False)
            assert first.status_code == 200 and bad.hits == 1
            # Another replica, another load balancer over the same member: skipped.
            second = call(two, key, "/v1/chat/completions", "coding2", False)
            assert second.status_code == 200, second.text[:300]
            assert second.json()["model"] == f"{member_provider()}/sim-model"
            assert bad.hits == 1
            assert "via replica" in second.text
