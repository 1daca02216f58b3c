"""What the SQLite state store adds to each request, against ``memory://``, in one run.

Two measurements, both on this machine in one process:

1. *engine*: the full routing path (LoadBalancingProvider → Router → store) with an
   in-process stub transport, so the store's cost is not hidden under HTTP and litellm
   noise.  Breakers on and a TPM threshold set, so every store operation a request can
   make is made.  Sequential, then 8 concurrent.
2. *end to end*: the same, through litellm to a simulated backend on loopback, to show
   the added time next to a real request's cost.

Stores alternate request by request, so drift hits both alike.  Usage:

    .venv/bin/python benchmarks/state_store.py [--requests 1000] [--e2e 150]

Writes benchmarks/results/state_store.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from common import bench_config

from lbprovider.profiles import LoadBalancerConfig, Member
from lbprovider.provider import LoadBalancingProvider
from lbprovider.sim import serve
from lbprovider.state import StateStore
from lbprovider.state.memory import MemoryStore
from lbprovider.state.sqlite import SQLiteStore
from lbprovider.transport import Chunk, Usage

HI = [{"role": "user", "content": "hi"}]


class StubTransport:
    """Four chunks and usage, no I/O."""

    async def warm_up(self) -> None:
        """Nothing to warm."""

    async def stream(
        self, member: Member, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
    ) -> AsyncIterator[Chunk]:
        """Yield a tiny answer."""
        for text in ("Hello", " from", " the", " stub."):
            yield Chunk(text=text, backend=member.name, model=member.litellm_model)
        yield Chunk(finish_reason="stop", usage=Usage(10, 4), backend=member.name)


def config(urls: Sequence[str]) -> LoadBalancerConfig:
    """A round-robin LB over the given base URLs, breakers and TPM on."""
    return bench_config(urls, circuit_breaker_enabled=True, tpm_threshold=10)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(p) - 1]


async def measure(
    lbs: dict[str, LoadBalancingProvider], requests: int, concurrency: int
) -> dict[str, list[float]]:
    """Per-request wall time (ms) for each provider, alternating between them."""
    times: dict[str, list[float]] = {k: [] for k in lbs}

    async def one(lb: LoadBalancingProvider, bucket: list[float]) -> None:
        start = time.perf_counter()
        await lb.complete(HI)
        bucket.append((time.perf_counter() - start) * 1000)

    for _ in range(max(1, requests // concurrency)):
        for name, lb in lbs.items():
            await asyncio.gather(*(one(lb, times[name]) for _ in range(concurrency)))
    return times


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    """p50/p99 per store and what SQLite adds."""
    out: dict[str, Any] = {}
    for name, values in times.items():
        out[name] = {"n": len(values), "p50_ms": pct(values, 50), "p99_ms": pct(values, 99)}
    out["added_p50_ms"] = out["sqlite"]["p50_ms"] - out["memory"]["p50_ms"]
    out["added_p99_ms"] = out["sqlite"]["p99_ms"] - out["memory"]["p99_ms"]
    return out


async def main(requests: int, e2e: int) -> dict[str, Any]:
    """Run both measurements."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[str, StateStore] = {
            "memory": MemoryStore(),
            "sqlite": SQLiteStore(Path(tmp) / "state.db"),
        }
        stub = config(["http://127.0.0.1:9/v1"] * 3)
        lbs = {
            k: LoadBalancingProvider(stub, store=s, transport=StubTransport())
            for k, s in stores.items()
        }
        await measure(lbs, 50, 1)  # warm both paths
        results["engine_sequential"] = summarise(await measure(lbs, requests, 1))
        results["engine_concurrent8"] = summarise(await measure(lbs, requests, 8))
        if e2e:
            async with serve("chunks=4") as a, serve("chunks=4") as b, serve("chunks=4") as c:
                real = config([a.url, b.url, c.url])
                stores2: dict[str, StateStore] = {
                    "memory": MemoryStore(),
                    "sqlite": SQLiteStore(Path(tmp) / "e2e.db"),
                }
                lbs2 = {k: LoadBalancingProvider(real, store=s) for k, s in stores2.items()}
                await measure(lbs2, 20, 1)
                results["end_to_end_sequential"] = summarise(await measure(lbs2, e2e, 1))
        for s in stores.values():
            s.close()
    return results


def table(results: dict[str, Any]) -> str:
    """A markdown table of the results."""
    rows = [
        "| measurement | memory p50 | sqlite p50 | added p50 | memory p99 | sqlite p99 | "
        "added p99 | requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['memory']['p50_ms']:.3f} ms | {r['sqlite']['p50_ms']:.3f} ms | "
            f"**{r['added_p50_ms']:.3f} ms** | {r['memory']['p99_ms']:.3f} ms | "
            f"{r['sqlite']['p99_ms']:.3f} ms | {r['added_p99_ms']:.3f} ms | "
            f"{r['sqlite']['n']} each |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--e2e", type=int, default=150)
    args = parser.parse_args()
    found = asyncio.run(main(args.requests, args.e2e))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "state_store.json").write_text(json.dumps(found, indent=2))
    print(table(found))
