"""What the benchmark scripts share: the load balancer they measure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from lbprovider.profiles import LoadBalancerConfig, Member, Policy, TransportKind
from lbprovider.settings import LBSettings

KEY = "sk-bench-not-a-real-key"


def bench_config(
    urls: Sequence[str], name: str = "bench", *, transport: str = "native", **settings: Any
) -> LoadBalancerConfig:
    """A round-robin load balancer over the given base URLs, members m0, m1, ...,
    called through ``transport`` (``native`` or ``litellm``)."""
    members = tuple(
        Member(
            name=f"m{i}",
            provider="openai",
            model="bench",
            api_base=u,
            api_key=SecretStr(KEY),
            model_params={},
            transport=TransportKind(transport),
        )
        for i, u in enumerate(urls)
    )
    return LoadBalancerConfig(
        name=name,
        policy=Policy.ROUNDROBIN,
        members=members,
        settings=LBSettings(**settings),
        model_params={},
    )
