"""lbprovider against its peers, in one run: a raw HTTP client straight to one healthy
backend (the physical limit), a direct litellm call, our ``LoadBalancingProvider`` over
its native transport and over litellm, and ``litellm.Router`` configured as close to
ours as it allows; then the cost of a cold CLI call (``cold_start.py``).

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python benchmarks/compare.py [--quick]

Backends are ``lbprovider sim`` processes on 127.0.0.1, started fresh for every
(scenario, system) run so each system meets the same seeded faults, and kept out of
the measured process's CPU accounting.  Each system runs in its own subprocess, so its
peak memory is its own.  Writes ``benchmarks/results/compare.json``,
``docs/benchmarks.md`` and ``docs/benchmarks.png``.  Nothing here is a test: these are
figures, measured as ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import cold_start
from common import KEY, bench_config, start_sim

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MESSAGES = [{"role": "user", "content": "Write a short answer."}]
HEALTHY = "chunks=20,chunk_delay=0.01,prompt_tokens=20,completion_tokens=20"
TIMEOUT_MS = 1000  # our first-chunk timeout; Router's stream_timeout gets the same

UNPACED = "chunks=20,prompt_tokens=20,completion_tokens=20"
# Where benchmarks/gateway.py's section of docs/benchmarks.md starts (it runs to the end).
GATEWAY_MARK = "<!-- benchmarks/gateway.py writes from here to the end -->"
# Where benchmarks/routing.py's section starts (after the Gateway section; it runs to the
# end, and gateway.py keeps it).
ROUTING_MARK = "<!-- benchmarks/routing.py writes from here to the end -->"

# name: (faulty member behaviour or None, concurrency, requests[, healthy behaviour])
SCENARIOS: dict[str, tuple[Any, ...]] = {
    "healthy, sequential": (None, 1, 100),
    # The fault scenarios' load, with no fault: their reference.
    "healthy, concurrency 8": (None, 8, 120),
    "healthy, concurrency 32": (None, 32, 320),
    # Chunks back to back: no pacing caps throughput, so it measures CPU per request.
    "healthy, concurrency 32, unpaced": (None, 32, 640, UNPACED),
    "one member refuses connections": ("refused", 8, 120),
    "one member 503 half the time": (f"flaky=0.5,seed=7,{HEALTHY}", 8, 120),
    "one member stalls its first chunk 10 s": (f"stall_first_chunk=10,{HEALTHY}", 8, 120),
    "one member 429 + Retry-After: 1": (f"status=429,retry_after=1,{HEALTHY}", 8, 120),
}
SYSTEMS = ("raw", "direct", "lb-native", "lb-litellm", "router")
# --anthropic: the hot path over native Anthropic members, next to native OpenAI ones.
ANTHROPIC_SYSTEMS = ("raw-anthropic", "lb-anthropic", "raw", "lb-native")
RUN_DEADLINE_S = 150.0  # a run stops starting requests after this
REQUEST_CAP_S = 60.0  # one request is abandoned (a failure) after this


# -- backends ---------------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_backends(stack: ExitStack, faulty: str | None, healthy: str = HEALTHY) -> list[str]:
    """Three backends (member 0 gets the fault); returns their base URLs."""
    urls = []
    for i in range(3):
        spec = faulty if (i == 0 and faulty) else healthy
        if spec == "refused":
            urls.append(f"http://127.0.0.1:{closed_port()}/v1")
            continue
        urls.append(start_sim(stack, spec))
    return urls


def hits(urls: list[str]) -> int:
    """Requests the backends received so far (refused ones count none)."""
    total = 0
    for url in urls:
        try:
            with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats", timeout=5) as r:
                total += json.loads(r.read())["hits"]
        except OSError:
            pass
    return total


# -- one system, in its own process ----------------------------------------------------------


def lb_config(
    urls: list[str], name: str = "bench", transport: str = "native", provider: str = "openai"
) -> Any:
    """Round-robin over the members, breakers on, a first-chunk timeout."""
    return bench_config(
        urls,
        name,
        transport=transport,
        provider=provider,
        circuit_breaker_enabled=True,
        circuit_breaker_failure_threshold=3,
        circuit_breaker_recovery_timeout_ms=30_000,
        timeout_ms=TIMEOUT_MS,
        failover_retry_count=2,
    )


def router_for(urls: list[str]) -> Any:
    """litellm.Router, as close to our settings as it goes (see the report's notes)."""
    from litellm import Router

    return Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {
                    "model": "openai/bench",
                    "api_base": u,
                    "api_key": KEY,
                    "stream_timeout": TIMEOUT_MS / 1000,
                    "max_retries": 0,
                },
            }
            for u in urls
        ],
        routing_strategy="simple-shuffle",
        num_retries=2,  # our failover_retry_count
        retry_after=0,  # our failover_retry_delay_ms
        allowed_fails=3,  # our circuit_breaker_failure_threshold
        cooldown_time=30,  # our circuit_breaker_recovery_timeout_ms
        timeout=REQUEST_CAP_S,
    )


async def raw_system(healthy: str) -> Any:
    """The physical limit: aiohttp straight to one healthy member, ``json.loads`` per
    SSE line (what any client must do), no routing; warmed with one request."""
    import aiohttp

    session = aiohttp.ClientSession()
    body = json.dumps(
        {
            "model": "bench",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def chunks() -> Any:
        async with session.post(f"{healthy}/chat/completions", data=body, headers=headers) as r:
            async for line in r.content:
                if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                    event = json.loads(line[6:])
                    if event.get("choices") and event["choices"][0]["delta"].get("content"):
                        yield event["choices"][0]["delta"]["content"]

    async for _ in chunks():
        pass
    return chunks


async def raw_anthropic_system(healthy: str) -> Any:
    """raw_system for Anthropic Messages: aiohttp straight to one member's
    ``/v1/messages``, ``json.loads`` per ``data:`` line, the text deltas yielded."""
    import aiohttp

    session = aiohttp.ClientSession()
    body = json.dumps(
        {"model": "bench", "max_tokens": 64, "messages": MESSAGES, "stream": True}
    ).encode()
    headers = {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "Content-Type": "application/json",
    }

    async def chunks() -> Any:
        async with session.post(f"{healthy}/messages", data=body, headers=headers) as r:
            async for line in r.content:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "content_block_delta" and "text" in event["delta"]:
                        yield event["delta"]["text"]

    async for _ in chunks():
        pass
    return chunks


async def litellm_system(system: str, urls: list[str]) -> Any:
    """Every other system, warmed (imports, clients, first call) over the healthy
    member only, outside the measured window."""
    healthy = urls[1]
    kwargs = {"stream": True, "stream_options": {"include_usage": True}}

    async def drain(stream: Any) -> None:
        async for _ in stream:
            pass

    if system.startswith("lb-"):
        from lbprovider.provider import LoadBalancingProvider
        from lbprovider.state.memory import MemoryStore

        transport = system.removeprefix("lb-")
        # lb-anthropic: native Anthropic members (the sims answer /v1/messages too).
        provider = "anthropic" if transport == "anthropic" else "openai"
        transport = "native" if transport == "anthropic" else transport
        warm = lb_config([healthy], name="warm", transport=transport, provider=provider)
        await drain(LoadBalancingProvider(warm, store=MemoryStore()).stream(MESSAGES))
        lb = LoadBalancingProvider(
            lb_config(urls, transport=transport, provider=provider), store=MemoryStore()
        )

        async def lb_chunks() -> Any:
            async for chunk in lb.stream(MESSAGES):
                yield chunk.text

        return lb_chunks

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True

    async def direct() -> Any:
        return await litellm.acompletion(
            model="openai/bench",
            messages=MESSAGES,
            api_base=healthy,
            api_key=KEY,
            max_retries=0,
            **kwargs,
        )

    await drain(await direct())
    router = None
    if system == "router":
        warm_router = router_for([healthy])
        await drain(await warm_router.acompletion(model="bench", messages=MESSAGES, **kwargs))
        router = router_for(urls)

    async def chunks() -> Any:
        if router is not None:
            response = await router.acompletion(model="bench", messages=MESSAGES, **kwargs)
        else:
            response = await direct()
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    return chunks


async def run_system(
    system: str, urls: list[str], concurrency: int, requests: int
) -> dict[str, Any]:
    """Send the workload through one system; per-request latency, TTFC, CPU, memory."""
    healthy = urls[1]
    random.seed(1234)
    if system == "raw":
        chunks = await raw_system(healthy)
    elif system == "raw-anthropic":
        chunks = await raw_anthropic_system(healthy)
    else:
        chunks = await litellm_system(system, urls)
    latencies: list[float] = []
    ttfcs: list[float] = []
    errors: dict[str, int] = {}
    chunk_count = 0
    gate = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + RUN_DEADLINE_S
    not_run = 0

    async def one() -> None:
        nonlocal chunk_count, not_run
        async with gate:
            if time.monotonic() > deadline:
                not_run += 1
                return
            start = time.perf_counter()
            first = None
            try:
                async with asyncio.timeout(REQUEST_CAP_S):
                    async for text in chunks():
                        if text:
                            chunk_count += 1
                            if first is None:
                                first = time.perf_counter() - start
            except Exception as exc:  # a failed request is a result, not a crash
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            if first is None:
                errors["EmptyAnswer"] = errors.get("EmptyAnswer", 0) + 1
                return
            latencies.append(time.perf_counter() - start)
            ttfcs.append(first)

    hits0 = await asyncio.to_thread(hits, urls)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    used = await asyncio.to_thread(hits, urls) - hits0
    return {
        "system": system,
        "requests": requests,
        "succeeded": len(latencies),
        "not_run": not_run,
        "errors": errors,
        "wall_s": wall,
        "cpu_s": cpu,
        "chunks": chunk_count,
        "latencies": latencies,
        "ttfcs": ttfcs,
        "hits": used,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_in_subprocess(
    system: str, urls: list[str], concurrency: int, requests: int
) -> dict[str, Any]:
    """One system's run in a fresh interpreter."""
    arg = json.dumps(
        {"system": system, "urls": urls, "concurrency": concurrency, "requests": requests}
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--run-one", arg],
        capture_output=True,
        text=True,
        timeout=RUN_DEADLINE_S + REQUEST_CAP_S + 120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{system} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


# -- selection cost (no HTTP) ---------------------------------------------------------------


async def selection_cost(sizes: tuple[int, ...], rounds: int) -> dict[str, dict[int, float]]:
    """Microseconds per selection as the member count grows, both routers, in-process.

    Ours is measured at every size before litellm is imported: a garbage collection
    walks every live object, so litellm's modules (and a 300-member Router left alive)
    would add their walk to whichever router is measured next, as a per-call cost that
    grows with nothing of ours.  Each measurement starts after a full collection.
    """
    import gc

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from lbprovider.clock import SystemClock, real_sleep
    from lbprovider.routing import Router
    from lbprovider.state.memory import MemoryStore
    from lbprovider.transport import TransportSet

    out: dict[str, dict[int, float]] = {"lbprovider": {}, "router": {}}
    for n in sizes:
        urls = [f"http://127.0.0.1:{9000 + i}/v1" for i in range(n)]
        ours = Router(
            lb_config(urls, name=f"sel{n}"),
            store=MemoryStore(),
            transports=TransportSet(),
            clock=SystemClock(),
            sleep=real_sleep,
        )
        selection = ours.selection
        for _ in range(50):
            start, known = await selection.start()
            await selection.admit(ours.config.members[start.index], known=known)
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(rounds):
            start, known = await selection.start()
            await selection.admit(ours.config.members[start.index], known=known)
        out["lbprovider"][n] = (time.perf_counter() - t0) / rounds * 1e6
        del ours, selection
    for n in sizes:
        urls = [f"http://127.0.0.1:{9000 + i}/v1" for i in range(n)]
        theirs = router_for(urls)
        for _ in range(50):
            await theirs.async_get_available_deployment(model="bench", request_kwargs={})
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(rounds):
            await theirs.async_get_available_deployment(model="bench", request_kwargs={})
        out["router"][n] = (time.perf_counter() - t0) / rounds * 1e6
        del theirs
    return out


# -- report -----------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float | None:
    """The p-th percentile (inclusive), or None without data."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[round(p) - 1]


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """The figures the report shows for one run."""
    ok = run["succeeded"]
    return {
        "system": run["system"],
        "requests": run["requests"],
        "succeeded": ok,
        "success_rate": ok / run["requests"],
        "errors": run["errors"],
        "not_run": run["not_run"],
        "p50_ms": _ms(pct(run["latencies"], 50)),
        "p95_ms": _ms(pct(run["latencies"], 95)),
        "p99_ms": _ms(pct(run["latencies"], 99)),
        "ttfc_p50_ms": _ms(pct(run["ttfcs"], 50)),
        "ttfc_p95_ms": _ms(pct(run["ttfcs"], 95)),
        "ttfc_p99_ms": _ms(pct(run["ttfcs"], 99)),
        "req_per_s": ok / run["wall_s"] if run["wall_s"] else 0.0,
        "chunks_per_s": run["chunks"] / run["wall_s"] if run["wall_s"] else 0.0,
        "cpu_ms_per_req": run["cpu_s"] / max(ok, 1) * 1000,
        "peak_rss_mb": run["peak_rss_mb"],
        "backend_hits": run["hits"],
        "wasted_hits": run["hits"] - ok,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _run(results: dict[str, Any], scenario: str, system: str) -> dict[str, Any]:
    return next(r for r in results["scenarios"][scenario] if r["system"] == system)


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets, each as the ratio measured in this run, met or missed."""
    rows: list[tuple[str, float, str, bool]] = []
    seq = "healthy, sequential"
    ratio = (
        _run(results, seq, "lb-native")["cpu_ms_per_req"]
        / _run(results, seq, "raw")["cpu_ms_per_req"]
    )
    rows.append(
        ("hot path, healthy sequential: lb-native CPU/request ÷ raw", ratio, "≤ 1.2", ratio <= 1.2)
    )
    for scenario in ("healthy, concurrency 32", "healthy, concurrency 32, unpaced"):
        ratio = (
            _run(results, scenario, "lb-native")["req_per_s"]
            / _run(results, scenario, "direct")["req_per_s"]
        )
        rows.append((f"{scenario}: lb-native req/s ÷ direct litellm", ratio, "≥ 3", ratio >= 3))
    reference = "healthy, concurrency 8"
    faults = [s for s in results["scenarios"] if s.startswith("one member")]
    for scenario in faults:
        ours = _run(results, scenario, "lb-native")
        rows.append(
            (
                f"{scenario}: lb-native success",
                ours["success_rate"],
                "= 1",
                ours["success_rate"] == 1,
            )
        )
        theirs = _run(results, scenario, "router")
        if ours["ttfc_p99_ms"] is None or theirs["ttfc_p99_ms"] is None:
            continue
        ratio = ours["ttfc_p99_ms"] / theirs["ttfc_p99_ms"]
        rows.append((f"{scenario}: lb-native TTFC p99 ÷ Router's", ratio, "≤ 1", ratio <= 1))
        hits = (ours["wasted_hits"], theirs["wasted_hits"])
        rows.append(
            (
                f"{scenario}: wasted hits, lb-native vs Router ({hits[0]} vs {hits[1]})",
                hits[0] / max(hits[1], 1),
                "≤ 1",
                hits[0] <= hits[1],
            )
        )
        if reference in results["scenarios"] and "stalls" not in scenario:
            healthy = _run(results, reference, "lb-native")["ttfc_p99_ms"]
            ratio = ours["ttfc_p99_ms"] / healthy
            rows.append((f"{scenario}: TTFC p99 ÷ healthy run's", ratio, "≤ 1.5", ratio <= 1.5))
        elif reference in results["scenarios"]:
            healthy = _run(results, reference, "lb-native")["ttfc_p99_ms"]
            bound = (TIMEOUT_MS + healthy) / ours["ttfc_p99_ms"]
            rows.append(
                (
                    f"{scenario}: (timeout_ms + healthy p99) ÷ TTFC p99",
                    bound,
                    "≥ 1",
                    bound >= 1,
                )
            )
    cold = results.get("cold_start")
    if cold:
        ratio = (
            cold["lbprovider chat (native members)"]["cpu_s"] / cold["lbprovider --help"]["cpu_s"]
        )
        rows.append(
            ("cold `lbprovider chat` (native) CPU ÷ `lbprovider --help`", ratio, "≤ 4", ratio <= 4)
        )
        anthropic = cold.get("lbprovider chat (native Anthropic members)")
        if anthropic:
            theirs = anthropic["cpu_s"] / cold["lbprovider --help"]["cpu_s"]
            rows.append(
                (
                    "cold `lbprovider chat` (Anthropic members) CPU ÷ `--help`, vs native OpenAI's "
                    f"{ratio:.2f}×",
                    theirs,
                    f"≤ {ratio:.2f}",
                    theirs <= ratio,
                )
            )
        ratio = (
            cold["llm -m lb/bench-native"]["wall_s"]
            / cold["llm -m sim-direct (no lbprovider)"]["wall_s"]
        )
        rows.append(("cold `llm -m lb/NAME` wall ÷ `llm -m` direct", ratio, "≤ 1.3", ratio <= 1.3))
        base = cold.get(cold_start.BASELINE, {}).get("cpu_s")
        for command in ("lbprovider --help", "lbprovider profiles list", "lbprovider stats --json"):
            if base and command in cold:
                ratio = cold[command]["cpu_s"] / base
                rows.append(
                    (
                        f"cold `{command}` CPU ÷ importing click, pydantic, rich",
                        ratio,
                        "≤ 2",
                        ratio <= 2,
                    )
                )
    lines = ["| target | measured | wanted | |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {value:.2f}× | {wanted} | {'met' if ok else 'missed'} |"
        for name, value, wanted, ok in rows
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """docs/benchmarks.md."""
    lines = [
        "# Benchmarks: lbprovider, litellm Router, a direct call and a raw client",
        "",
        "Generated by `.venv/bin/python benchmarks/compare.py` "
        f"({results['meta']['date']}, {results['meta']['machine']}). Figures from one run;",
        "ratios are what to compare. Backends are `lbprovider sim` processes on loopback",
        f"streaming 20 chunks 10 ms apart (`{HEALTHY}`; the unpaced scenario `{UNPACED}`);",
        "member 0 carries the fault. Systems:",
        "",
        "- **raw**: aiohttp straight to one healthy member, `json.loads` per SSE line, no",
        "  routing: the physical limit of a Python client;",
        "- **direct**: `litellm.acompletion` to one healthy member;",
        "- **lb-native** / **lb-litellm**: `LoadBalancingProvider` over all three members,",
        "  its native transport / its litellm transport; round-robin, retry count 2, breakers",
        f"  (3 failures, 30 s), first-chunk timeout {TIMEOUT_MS} ms, `memory://` state;",
        "- **router**: `litellm.Router`, simple-shuffle, `num_retries=2`, `allowed_fails=3`,",
        f"  `cooldown_time=30`, `stream_timeout={TIMEOUT_MS / 1000:g}`.",
        "",
        "CPU is the measuring process's own (the sims run elsewhere). A cold CLI call is",
        "measured by `benchmarks/cold_start.py` (below).",
        "",
        "## Targets",
        "",
        *targets(results),
        "",
        "![p99 time to first chunk and success rate](benchmarks.png)",
        "",
    ]
    for scenario, runs in results["scenarios"].items():
        lines += [
            f"## {scenario}",
            "",
            "| system | success | p50 / p95 / p99 ms | TTFC p50 / p95 / p99 ms | req/s | "
            "chunks/s | CPU ms/req | peak RSS MB | backend hits (wasted) | errors |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "-"
            if r["not_run"]:
                errors += f"; {r['not_run']} not run (time bound)"
            lines.append(
                f"| {r['system']} | {r['success_rate'] * 100:.1f}% | {_f(r['p50_ms'])} / "
                f"{_f(r['p95_ms'])} / {_f(r['p99_ms'])} | {_f(r['ttfc_p50_ms'])} / "
                f"{_f(r['ttfc_p95_ms'])} / {_f(r['ttfc_p99_ms'])} | {r['req_per_s']:.1f} | "
                f"{r['chunks_per_s']:.0f} | {r['cpu_ms_per_req']:.2f} | {r['peak_rss_mb']:.0f} | "
                f"{r['backend_hits']} ({r['wasted_hits']}) | {errors} |"
            )
        lines.append("")
    sel = results["selection_us"]
    lines += [
        "## Selection cost (no HTTP)",
        "",
        "Microseconds per selection. lbprovider: `Selection.start()` + `Selection.admit()` "
        "(ticket and start index, breaker and TPM check, `memory://`). litellm Router: "
        "`async_get_available_deployment` (simple-shuffle).",
        "",
        "| members | " + " | ".join(str(n) for n in sel["lbprovider"]) + " |",
        "|---|" + "---|" * len(sel["lbprovider"]),
    ]
    for system, row in sel.items():
        lines.append(f"| {system} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
    if results.get("cold_start"):
        lines += [
            "",
            "## Cold start: one CLI call, a new process",
            "",
            "`benchmarks/cold_start.py`: each command against one sim, median of "
            f"{results.get('cold_runs', 5)} alternating runs, CPU = user + sys of the child.",
            "",
            *cold_start.table(results["cold_start"]),
        ]
    lines += ["", results.get("notes", ""), ""]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> bool:
    """docs/benchmarks.png (needs matplotlib: the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = list(results["scenarios"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 8))
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        runs = [
            next(r for r in results["scenarios"][s] if r["system"] == system) for s in scenarios
        ]
        xs = [x + (i - (len(SYSTEMS) - 1) / 2) * width for x in range(len(scenarios))]
        ax1.bar(xs, [r["ttfc_p99_ms"] or 0 for r in runs], width, label=system)
        ax2.bar(xs, [r["success_rate"] * 100 for r in runs], width, label=system)
    labels = [s.replace("one member ", "").replace(", ", "\n") for s in scenarios]
    for ax, title in ((ax1, "p99 time to first chunk (ms, log scale)"), (ax2, "success rate (%)")):
        ax.set_xticks(range(len(scenarios)), labels, fontsize=8)
        ax.set_title(title)
    fig.legend(*ax1.get_legend_handles_labels(), loc="upper center", ncol=len(SYSTEMS), fontsize=8)
    ax1.set_yscale("log")
    ax2.set_ylim(0, 105)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    return True


def anthropic_hot_path(requests: int, *, write: bool = True) -> dict[str, Any]:
    """The hot path of native Anthropic members next to native OpenAI ones, in one run:
    CPU per request of ``LoadBalancingProvider.stream`` ÷ a raw aiohttp client reading
    the same stream, sequential, healthy; saved as ``results/anthropic.json``."""
    runs: dict[str, dict[str, Any]] = {}
    for system in ANTHROPIC_SYSTEMS:
        with ExitStack() as stack:
            urls = start_backends(stack, None)
            runs[system] = summarise(run_in_subprocess(system, urls, 1, requests))
        r = runs[system]
        print(
            f"anthropic hot path {system:14} success {r['success_rate']:.0%}  "
            f"CPU {r['cpu_ms_per_req']:.2f} ms/req  p50 {_f(r['p50_ms'])} ms",
            flush=True,
        )
        assert r["success_rate"] == 1.0, r
    out: dict[str, Any] = {"requests": requests, "runs": runs}
    for wire, (raw, lb) in {
        "anthropic": ("raw-anthropic", "lb-anthropic"),
        "openai": ("raw", "lb-native"),
    }.items():
        out[f"{wire}_ratio"] = runs[lb]["cpu_ms_per_req"] / runs[raw]["cpu_ms_per_req"]
        print(f"anthropic hot path: {lb} CPU/request ÷ {raw}: {out[f'{wire}_ratio']:.2f}×")
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "anthropic.json").write_text(json.dumps(out, indent=2))
    return out


def main(quick: bool, only: str | None = None) -> None:
    """Every scenario x system, selection cost and cold start; writes the reports.

    ``only``: run just the scenarios whose name contains it, and merge them into the
    results of the last full run (which must exist), then rewrite the report.
    """
    import platform

    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        },
        "scenarios": {},
    }
    for scenario, (faulty, concurrency, requests, *healthy) in SCENARIOS.items():
        if only is not None and only not in scenario:
            continue
        if quick:
            requests = max(concurrency * 2, requests // 4)
        runs = []
        for system in SYSTEMS:
            with ExitStack() as stack:
                urls = start_backends(stack, faulty, *healthy)
                run = run_in_subprocess(system, urls, concurrency, requests)
            runs.append(summarise(run))
            print(
                f"{scenario:42} {system:10} success {runs[-1]['success_rate']:.0%} "
                f"p99 {_f(runs[-1]['p99_ms'])} ms  TTFC p99 {_f(runs[-1]['ttfc_p99_ms'])} ms"
                f"  CPU {runs[-1]['cpu_ms_per_req']:.2f} ms/req  {runs[-1]['req_per_s']:.1f} req/s"
                f"  hits {run['hits']}",
                flush=True,
            )
        results["scenarios"][scenario] = runs
    if only is not None:
        merged = json.loads((RESULTS / "compare.json").read_text())
        merged["scenarios"].update(results["scenarios"])
        merged["scenarios"] = {
            s: merged["scenarios"][s] for s in SCENARIOS if s in merged["scenarios"]
        }
        (RESULTS / "compare.json").write_text(json.dumps(merged, indent=2))
        report(merged)
        return
    sizes = (3, 30, 300, 1000)
    results["selection_us"] = {
        k: {str(n): v for n, v in row.items()}
        for k, row in asyncio.run(selection_cost(sizes, 500 if quick else 2000)).items()
    }
    results["cold_runs"] = 3 if quick else 5
    results["cold_start"] = cold_start.measure(results["cold_runs"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compare.json").write_text(json.dumps(results, indent=2))
    report(results)


def report(results: dict[str, Any]) -> None:
    """Write docs/benchmarks.md (and the chart) from a results object."""
    notes = ROOT / "benchmarks" / "notes.md"
    results["notes"] = notes.read_text() if notes.exists() else ""
    has_chart = chart(results, ROOT / "docs" / "benchmarks.png")
    text = markdown(results)
    if not has_chart:
        text = text.replace(
            "![p99 time to first chunk and success rate](benchmarks.png)",
            "(install the `bench` extra for the chart)",
        )
    docs = ROOT / "docs" / "benchmarks.md"
    # The Gateway and Routing sections are gateway.py's and routing.py's: keep them.
    old = docs.read_text() if docs.exists() else ""
    marks = [old.index(m) for m in (GATEWAY_MARK, ROUTING_MARK) if m in old]
    if marks:
        text = text.rstrip() + "\n\n" + old[min(marks) :]
    docs.write_text(text)
    print(f"wrote {RESULTS / 'compare.json'} and docs/benchmarks.md")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="lbprovider vs litellm Router vs direct")
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/benchmarks.md from benchmarks/results/compare.json",
    )
    parser.add_argument(
        "--only", help="rerun the scenarios whose name contains this, into the last results"
    )
    parser.add_argument(
        "--selection",
        action="store_true",
        help="only the selection cost (3 to 1000 members); prints, writes nothing",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a smoke run (selection at 3 and 30 members, one scenario of 2 requests on "
        "raw and lb-native): prints, writes nothing",
    )
    parser.add_argument(
        "--anthropic",
        action="store_true",
        help="only the hot path over native Anthropic members vs a raw client (and the "
        "same for OpenAI members); writes results/anthropic.json",
    )
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.selection or args.tiny:
        sizes, rounds = ((3, 30), 20) if args.tiny else ((3, 30, 300, 1000), 2000)
        for system, row in asyncio.run(selection_cost(sizes, rounds)).items():
            cells = "  ".join(f"{n} members {us:.1f} µs" for n, us in row.items())
            print(f"selection {system:10} {cells}", flush=True)
    if args.tiny:
        with ExitStack() as stack:
            urls = start_backends(stack, None, UNPACED)
            for system in ("raw", "lb-native"):
                run = summarise(run_in_subprocess(system, urls, 1, 2))
                print(f"tiny {system:10} success {run['success_rate']:.0%}", flush=True)
                assert run["success_rate"] == 1.0, run
        anthropic_hot_path(2, write=False)
    elif args.anthropic:
        anthropic_hot_path(25 if args.quick else 100)
    elif args.selection:
        pass
    elif args.report_only:
        report(json.loads((RESULTS / "compare.json").read_text()))
    elif args.run_one:
        spec = json.loads(args.run_one)
        print(
            json.dumps(
                asyncio.run(
                    run_system(spec["system"], spec["urls"], spec["concurrency"], spec["requests"])
                )
            )
        )
    else:
        main(args.quick, args.only)
