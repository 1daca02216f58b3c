"""Shared fixtures: every test runs with its own home, profile dirs and working dir."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
    eph.update(settings)
    return {
        "version": 1,
        "provider": "openai",
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
