"""The engine's own vocabulary: what a resolved load balancer is (SPEC §2, §3, §4.1).

The ground floor: everything the engine routes with is here, and this module imports
nothing of lbprovider at run time (``LBSettings`` and pydantic's ``SecretStr`` are
named for the type checker only), so importing the engine's types costs no pydantic.
How a profile file becomes a :class:`LoadBalancerConfig` is the profile wing's job
(:mod:`lbprovider.profiles`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import SecretStr

    from lbprovider.settings import LBSettings

__all__ = [
    "DEFAULT_FAILURE_WINDOW_MS",
    "NATIVE_PROVIDERS",
    "Continuation",
    "LoadBalancerConfig",
    "Member",
    "Outline",
    "Policy",
    "TransportKind",
]


class Policy(StrEnum):
    """How the start member of a request is chosen (SPEC §3.1)."""

    ROUNDROBIN = "roundrobin"
    FAILOVER = "failover"

    @property
    def minimum_members(self) -> int:
        """The fewest members a load balancer of this policy may have: failover needs
        somewhere to fail over to (SPEC §2.1)."""
        return 2 if self is Policy.FAILOVER else 1


class TransportKind(StrEnum):
    """How a member is called (SPEC §4.1)."""

    NATIVE = "native"  # the provider's own HTTP API (OpenAI-compatible, Anthropic), no litellm
    LITELLM = "litellm"  # litellm.acompletion, for every other provider

    @classmethod
    def default_for(cls, provider: str) -> TransportKind:
        """``native`` for providers ``openai`` (whatever its base URL) and ``anthropic``,
        else ``litellm``."""
        return cls.NATIVE if provider.lower() in NATIVE_PROVIDERS else cls.LITELLM


# The providers whose API the native transport speaks (SPEC §4.1, §4.2).
NATIVE_PROVIDERS = frozenset({"openai", "anthropic"})


# The breaker's default failure window (SPEC §2.3): LBSettings' default, and what a
# report assumes of a profile that sets none (without building LBSettings).
DEFAULT_FAILURE_WINDOW_MS = 60_000


class Continuation(StrEnum):
    """Whether a member can continue a partial answer (SPEC §3.4)."""

    NONE = "none"
    PREFILL = "prefill"  # give the partial answer as a trailing assistant message


@dataclass(frozen=True, slots=True)
class Member:
    """A resolved member: everything one backend call needs."""

    name: str
    provider: str
    model: str
    api_base: str | None
    api_key: SecretStr | None = field(repr=False)
    model_params: Mapping[str, Any]
    context_limit: int | None = None
    file: Path | None = None
    # None: the provider's default (TransportKind.default_for), filled in below.
    transport: TransportKind = None  # type: ignore[assignment]
    max_output_tokens: int | None = None
    continuation: Continuation = Continuation.NONE

    def __post_init__(self) -> None:
        if self.transport is None:
            object.__setattr__(self, "transport", TransportKind.default_for(self.provider))

    @property
    def litellm_model(self) -> str:
        """The litellm model string ``provider/model``."""
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class LoadBalancerConfig:
    """A resolved load balancer: its members in order, its settings, what was dropped."""

    name: str
    policy: Policy
    members: tuple[Member, ...]
    settings: LBSettings
    model_params: Mapping[str, Any]
    file: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def member_names(self) -> list[str]:
        """Member names in routing order."""
        return [m.name for m in self.members]

    @property
    def outline(self) -> Outline:
        """What a stats report needs of this load balancer."""
        return Outline(
            name=self.name,
            policy=self.policy,
            models={m.name: m.litellm_model for m in self.members},
            failure_window_ms=self.settings.circuit_breaker_failure_window_ms,
            warnings=self.warnings,
        )


@dataclass(frozen=True, slots=True)
class Outline:
    """What a report needs of a load balancer: its members' names (in routing order) and
    models, its policy and the breaker's failure window; no keys, no validated settings,
    so a report is read without resolving keys or building the settings model."""

    name: str
    policy: Policy
    models: Mapping[str, str]  # member name -> ``provider/model``, in routing order
    failure_window_ms: int = DEFAULT_FAILURE_WINDOW_MS
    warnings: tuple[str, ...] = ()

    @property
    def member_names(self) -> list[str]:
        """Member names in routing order."""
        return list(self.models)
