"""What the benchmark scripts share: the load balancer they measure, simulated backends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from pydantic import SecretStr

from lbprovider.config import LoadBalancerConfig, Member, Policy, TransportKind
from lbprovider.settings import LBSettings

KEY = "sk-bench-not-a-real-key"


def bench_config(
    urls: Sequence[str],
    name: str = "bench",
    *,
    transport: str = "native",
    provider: str = "openai",
    **settings: Any,
) -> LoadBalancerConfig:
    """A round-robin load balancer over the given base URLs, members m0, m1, ...,
    called through ``transport`` (``native`` or ``litellm``) as ``provider``."""
    members = tuple(
        Member(
            name=f"m{i}",
            provider=provider,
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


def start_sim(stack: ExitStack, behavior: str) -> str:
    """An ``lbprovider sim`` process on loopback (stopped when ``stack`` closes): a
    backend in another process, as a real one is; returns its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lbprovider.cli", "sim", "--behavior", behavior, "--for", "900"],
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    assert proc.stdout is not None
    return proc.stdout.readline().split()[3]
