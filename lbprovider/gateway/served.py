"""Which load balancers the gateway serves, and under which names (SPEC §11.2).

A request's ``model`` names a served load balancer.  Served: the ``--profile`` names, else
every load balancer in the profile store (filtered by ``LBPROVIDER_ALLOWED_PROFILES``
when set), looked up again as the store changes.  ``--alias PATTERN=NAME`` (shell glob,
first match wins) maps the names clients insist on (``claude-*``, ``gpt-5*``) to a load
balancer, and ``--default NAME`` takes every other name; without them an unknown name is
a 404 that lists the served ones.  Providers are built once per load balancer and
reused until their profile files change (:class:`~lbprovider.provider_cache.ProviderCache`).
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbprovider.errors import ConfigError
from lbprovider.profiles.files import check_name
from lbprovider.profiles.store import ProfileStore
from lbprovider.provider import LoadBalancingProvider
from lbprovider.provider_cache import ProviderCache, loadbalancer_names

__all__ = ["ALLOWED_ENV", "Alias", "Served", "UnknownModelError", "parse_alias"]

ALLOWED_ENV = "LBPROVIDER_ALLOWED_PROFILES"


class UnknownModelError(ConfigError):
    """A ``model`` the gateway serves no load balancer for (404 ``model_not_found``)."""


@dataclass(frozen=True)
class Alias:
    """``PATTERN=NAME``: client model names matching the glob go to load balancer NAME."""

    pattern: str
    target: str


def parse_alias(text: str) -> Alias:
    """``claude-*=coding`` → Alias; anything else is a ConfigError naming ``--alias``."""
    pattern, sep, target = text.partition("=")
    if not sep or not pattern.strip() or not target.strip():
        raise ConfigError(
            f"--alias {text!r} is not PATTERN=NAME",
            field="--alias",
            hint="e.g. --alias 'claude-*=coding'",
        )
    return Alias(pattern.strip(), check_name(target.strip(), field="--alias"))


@dataclass
class Served:
    """The served names, the aliases, and a provider per load balancer."""

    profiles: ProfileStore
    names: Sequence[str] = ()  # --profile; empty: every load balancer in the store
    aliases: Sequence[Alias] = ()
    default: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    provider_kwargs: Mapping[str, Any] = field(default_factory=dict)
    started: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.cache = ProviderCache(self.profiles, **self.provider_kwargs)

    def served(self) -> list[str]:
        """The load balancers served now, by name."""
        names = list(self.names) or loadbalancer_names(self.profiles)
        allowed = {n.strip() for n in self.env.get(ALLOWED_ENV, "").split(",") if n.strip()}
        return [n for n in names if not allowed or n in allowed]

    def resolve(self, model: str) -> str:
        """The load balancer a request's ``model`` names (aliases, then the default)."""
        served = self.served()
        if model in served:
            return model
        for alias in self.aliases:
            if fnmatch.fnmatchcase(model, alias.pattern):
                return alias.target
        if self.default is not None:
            return self.default
        listed = ", ".join(served) or "none"
        raise UnknownModelError(
            f"no load balancer is served as {model!r}; served: {listed}",
            field="model",
            hint="use a served name, or serve with --alias PATTERN=NAME or --default NAME",
        )

    def provider(self, name: str) -> LoadBalancingProvider:
        """The built provider of load balancer ``name``."""
        return self.cache.get(name)

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``: the served load balancers, in a form OpenAI and Anthropic
        clients both read."""
        created = self.started
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        data = [
            {
                "id": name,
                "object": "model",
                "type": "model",
                "display_name": name,
                "created": created,
                "created_at": stamp,
                "owned_by": "lbprovider",
            }
            for name in self.served()
        ]
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
