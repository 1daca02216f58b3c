"""The gateway against its peers, in one run: ``lbprovider serve``, the LiteLLM proxy in
front of lbprovider (``lb/NAME``, as docs/litellm-proxy.yaml), lbprovider in process and
a raw aiohttp client straight to the backends.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/gateway.py [--quick] [--tiny] [--docs]

Backends are three ``lbprovider sim`` processes on 127.0.0.1 streaming 20 chunks 10 ms
apart (compare.py's healthy members), one load balancer ``bench`` round-robin over
them.  ``serve`` and the proxy are subprocesses, measured one after the other (never
both running); the client for both is the same aiohttp code posting a streamed
``/v1/chat/completions``, and the raw client runs it round-robin straight to the sims.
Measured:

- 32 and 64 concurrent streamed requests: p50 / p99 of the total time, time to first
  chunk, req/s, and CPU per request: the server's process tree (``/proc`` utime + stime
  of the process and its descendants, before and after the load) for ``serve`` and the
  proxy, the measuring process's own for in-process and raw;
- start until ``GET /health`` answers (``/health/liveliness`` for the proxy), against
  starting a fresh interpreter that imports aiohttp, click, pydantic and rich;
- the RSS of the ``serve`` process after 1000 requests and after a second 1000.

``--quick`` runs a quarter of the requests; ``--tiny`` a handful (a CI smoke test: under
a minute, the proxy skipped if it does not answer within 20 s).  Writes
``benchmarks/results/gateway.json`` (``gateway-tiny.json`` for ``--tiny``, or ``--out``);
``--docs`` also rewrites the Gateway section of docs/benchmarks.md (``--report-only``:
from the last results, without running).  Nothing here is a
test: these are figures, compared as ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import KEY, start_sim
from compare import GATEWAY_MARK as DOCS_MARK  # compare.py keeps the section it starts
from compare import ROUTING_MARK  # routing.py's section follows ours

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
NOTES = ROOT / "benchmarks" / "gateway-notes.md"
PROXY_CONFIG = ROOT / "docs" / "litellm-proxy.yaml"
HEALTHY = "chunks=20,chunk_delay=0.01,prompt_tokens=20,completion_tokens=20"
MESSAGES = [{"role": "user", "content": "Write a short answer."}]
LB = "bench"
SERVE_KEY = "sk-gateway-bench-" + secrets.token_hex(8)
PROXY_KEY = "sk-proxy-bench-" + secrets.token_hex(8)
IMPORTS = "import aiohttp, click, pydantic, rich"
REQUEST_CAP_S = 60.0
TICKS = os.sysconf("SC_CLK_TCK")
SYSTEMS = ("raw", "in-process", "serve", "proxy", "serve /v1/messages", "proxy /v1/messages")
FULL_COMMAND = "PYTHONPATH=$PWD .venv/bin/python benchmarks/gateway.py"


@dataclass(frozen=True)
class Sizes:
    """How much each phase sends."""

    c32: int  # requests at concurrency 32
    c64: int  # requests at concurrency 64
    rss_batch: int  # requests per RSS batch (two batches)
    starts: int  # timed starts of serve (and of the import baseline)
    proxy_start_s: float  # give up on the proxy after this


FULL = Sizes(c32=640, c64=1280, rss_batch=1000, starts=5, proxy_start_s=180.0)
QUICK = Sizes(c32=160, c64=320, rss_batch=250, starts=3, proxy_start_s=180.0)
TINY = Sizes(c32=32, c64=64, rss_batch=100, starts=1, proxy_start_s=20.0)


# -- the servers ------------------------------------------------------------------------------


def write_profiles(home: Path, urls: list[str]) -> None:
    """Members m0..m2 (native transport) and the load balancer ``bench`` over them."""
    profiles = home / "profiles"
    profiles.mkdir(parents=True)
    for i, url in enumerate(urls):
        member = {
            "version": 1,
            "provider": "openai",
            "model": "bench",
            "ephemeralSettings": {"base-url": url, "auth-key": KEY},
        }
        (profiles / f"m{i}.json").write_text(json.dumps(member))
    lb = {
        "version": 1,
        "type": "loadbalancer",
        "policy": "roundrobin",
        "profiles": [f"m{i}" for i in range(len(urls))],
    }
    (profiles / f"{LB}.json").write_text(json.dumps(lb))


def server_env(home: Path) -> dict[str, str]:
    """lbprovider's home, no state file, offline litellm, the two keys."""
    return {
        **os.environ,
        "LBPROVIDER_HOME": str(home),
        "LBPROVIDER_STATE": "memory://",
        "LBPROVIDER_SERVE_KEY": SERVE_KEY,
        "LITELLM_MASTER_KEY": PROXY_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
    }


def free_port() -> int:
    """An unused port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class Server:
    """A started server subprocess."""

    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    start_s: float  # Popen until the health URL answered
    log: Path

    def stop(self) -> None:
        """Terminate it (and wait)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


READY = re.compile(r"lbprovider serving \d+ load balancers on (http://\S+)")


def start_serve(home: Path, log: Path) -> Server:
    """``lbprovider serve --port 0 --profile bench``; timed until ``/health`` answers."""
    env = server_env(home)
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbprovider.cli", "serve", "--port", "0", "--profile", LB],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = None
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        if base is None and (found := READY.search(log.read_text())):
            base = found.group(1)
        if base is not None and answers(f"{base}/health"):
            return Server(proc, base, time.perf_counter() - t0, log)
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("serve did not answer /health in 60 s")
        time.sleep(0.005)  # polling a starting server


def start_proxy(home: Path, log: Path, give_up_s: float) -> Server | None:
    """The LiteLLM proxy with docs/litellm-proxy.yaml's settings serving ``lb/bench``;
    timed until ``/health/liveliness`` answers; None if it takes longer than
    ``give_up_s``."""
    import yaml

    config = yaml.safe_load(PROXY_CONFIG.read_text())
    config["model_list"] = [{"model_name": LB, "litellm_params": {"model": f"lb/{LB}"}}]
    path = home / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(path)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=server_env(home), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + give_up_s
    while not answers(f"{base}/health/liveliness"):
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited {proc.returncode}:\n{log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return None
        time.sleep(0.05)
    return Server(proc, base, time.perf_counter() - t0, log)


def import_baseline() -> float:
    """Wall seconds of a fresh interpreter importing aiohttp, click, pydantic, rich."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True)
    return time.perf_counter() - t0


# -- process figures from /proc ---------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + sys) of ``root`` and its live descendants, plus what its
    waited-for children used."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    ticks = 0
    for pid in tree:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:13])  # utime, stime
        if pid == root:
            ticks += sum(int(f) for f in fields[13:15])  # cutime, cstime
    return ticks / TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# -- the clients ------------------------------------------------------------------------------

Stream = Callable[[], AsyncIterator[str]]


def http_client(session: Any, bases: list[str], key: str) -> Stream:
    """Streamed ``POST {base}/chat/completions``, round-robin over ``bases`` (each ends
    in ``/v1``), ``json.loads`` per SSE line; yields the content deltas."""
    body = json.dumps(
        {
            "model": LB,
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    turn = 0

    async def chunks() -> AsyncIterator[str]:
        nonlocal turn
        base = bases[turn % len(bases)]
        turn += 1
        async with session.post(f"{base}/chat/completions", data=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            async for line in r.content:
                if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError("error event")
                    if event.get("choices") and event["choices"][0]["delta"].get("content"):
                        yield event["choices"][0]["delta"]["content"]

    return chunks


def messages_client(session: Any, base: str, key: str) -> Stream:
    """Streamed Anthropic ``POST {base}/v1/messages``, ``json.loads`` per ``data:`` line;
    yields the text deltas."""
    body = json.dumps({"model": LB, "max_tokens": 64, "messages": MESSAGES, "stream": True})
    headers = {
        "Authorization": f"Bearer {key}",
        "x-api-key": key,
        "anthropic-version": "2023-06-01",
        "Content-Type": "application/json",
    }

    async def chunks() -> AsyncIterator[str]:
        async with session.post(f"{base}/v1/messages", data=body, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
            async for line in r.content:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("type") == "error":
                        raise RuntimeError("error event")
                    if event.get("type") == "content_block_delta" and event["delta"].get("text"):
                        yield event["delta"]["text"]

    return chunks


def in_process_client(home: Path) -> Stream:
    """``LoadBalancingProvider.stream`` over the same profile, ``memory://`` state."""
    from lbprovider.profiles.store import ProfileStore
    from lbprovider.provider import LoadBalancingProvider
    from lbprovider.state.memory import MemoryStore

    config = ProfileStore(env={"LBPROVIDER_HOME": str(home)}).load_loadbalancer(LB)
    provider = LoadBalancingProvider(config, store=MemoryStore())

    async def chunks() -> AsyncIterator[str]:
        async for chunk in provider.stream(MESSAGES):
            if chunk.text:
                yield chunk.text

    return chunks


async def load(chunks: Stream, concurrency: int, requests: int) -> dict[str, Any]:
    """Send ``requests`` streamed requests, ``concurrency`` at a time; latencies etc."""
    latencies: list[float] = []
    ttfcs: list[float] = []
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            start = time.perf_counter()
            first = None
            try:
                async with asyncio.timeout(REQUEST_CAP_S):
                    async for _ in chunks():
                        if first is None:
                            first = time.perf_counter() - start
            except Exception as exc:  # a failed request is a result, not a crash
                name = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                return
            if first is None:
                errors["empty answer"] = errors.get("empty answer", 0) + 1
                return
            latencies.append(time.perf_counter() - start)
            ttfcs.append(first)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    return {
        "requests": requests,
        "succeeded": len(latencies),
        "errors": errors,
        "wall_s": time.perf_counter() - wall0,
        "client_cpu_s": time.process_time() - cpu0,
        "latencies": latencies,
        "ttfcs": ttfcs,
    }


def pct(values: list[float], p: int) -> float | None:
    """The p-th percentile (inclusive), or None without data."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def summary(
    system: str, concurrency: int, run: dict[str, Any], server_cpu_s: float | None
) -> dict[str, Any]:
    """One table row's figures (milliseconds, req/s)."""
    ok = run["succeeded"]

    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000

    return {
        "system": system,
        "concurrency": concurrency,
        "requests": run["requests"],
        "succeeded": ok,
        "errors": run["errors"],
        "p50_ms": ms(pct(run["latencies"], 50)),
        "p99_ms": ms(pct(run["latencies"], 99)),
        "ttfc_p50_ms": ms(pct(run["ttfcs"], 50)),
        "ttfc_p99_ms": ms(pct(run["ttfcs"], 99)),
        "req_per_s": ok / run["wall_s"] if run["wall_s"] else 0.0,
        "client_cpu_ms_per_req": run["client_cpu_s"] / max(ok, 1) * 1000,
        "server_cpu_ms_per_req": (
            None if server_cpu_s is None else server_cpu_s / max(ok, 1) * 1000
        ),
    }


async def measure(
    system: str,
    chunks: Stream,
    sizes: Sizes,
    pid: int | None,
    rows: list[dict[str, Any]],
    *,
    c32_only: bool = False,
) -> None:
    """Warm up, then the 32- and 64-concurrent loads of one system, into ``rows``."""
    await load(chunks, 64, 128 if sizes is not TINY else 64)
    loads = ((32, sizes.c32),) if c32_only else ((32, sizes.c32), (64, sizes.c64))
    for concurrency, requests in loads:
        cpu0 = tree_cpu_s(pid) if pid else None
        run = await load(chunks, concurrency, requests)
        cpu = tree_cpu_s(pid) - cpu0 if pid and cpu0 is not None else None
        rows.append(summary(system, concurrency, run, cpu))
        print(line(rows[-1]), flush=True)


# -- the run ----------------------------------------------------------------------------------


async def run_all(sizes: Sizes, tmp: Path, urls: list[str]) -> dict[str, Any]:
    """Every phase; the results object."""
    import aiohttp

    home = tmp / "home"
    write_profiles(home, urls)
    out: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
            "sizes": sizes.__dict__,
        },
        "rows": [],
        "notes": [],
    }
    rows: list[dict[str, Any]] = out["rows"]

    # Start times, alternating with the import baseline so drift hits both alike.
    import_baseline()  # disk caches
    baselines, starts = [], []
    for i in range(sizes.starts):
        baselines.append(import_baseline())
        server = start_serve(home, tmp / f"serve-start{i}.log")
        starts.append(server.start_s)
        server.stop()
    out["start"] = {
        "imports_s": statistics.median(baselines),
        "serve_s": statistics.median(starts),
        "runs": sizes.starts,
    }
    print(
        f"start: serve {out['start']['serve_s']:.2f} s, `{IMPORTS}` "
        f"{out['start']['imports_s']:.2f} s (median of {sizes.starts})",
        flush=True,
    )

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await measure("raw", http_client(session, urls, KEY), sizes, None, rows)
        await measure("in-process", in_process_client(home), sizes, None, rows)

        server = start_serve(home, tmp / "serve.log")
        try:
            client = http_client(session, [f"{server.base}/v1"], SERVE_KEY)
            await measure("serve", client, sizes, server.proc.pid, rows)
            client = messages_client(session, server.base, SERVE_KEY)
            pid = server.proc.pid
            await measure("serve /v1/messages", client, sizes, pid, rows, c32_only=True)
        finally:
            server.stop()

        # RSS on a fresh serve process, so "after N requests" counts from its first.
        server = start_serve(home, tmp / "serve-rss.log")
        try:
            client = http_client(session, [f"{server.base}/v1"], SERVE_KEY)
            rss = [{"after": 0, "rss_mb": rss_mb(server.proc.pid)}]
            for batch in (1, 2):
                await load(client, 64, sizes.rss_batch)
                rss.append({"after": batch * sizes.rss_batch, "rss_mb": rss_mb(server.proc.pid)})
            out["serve_rss"] = rss
            print(
                "serve RSS: " + ", ".join(f"{r['rss_mb']:.1f} MB after {r['after']}" for r in rss),
                flush=True,
            )
        finally:
            server.stop()

        proxy = start_proxy(home, tmp / "proxy.log", sizes.proxy_start_s)
        if proxy is None:
            note = f"proxy skipped: it did not answer within {sizes.proxy_start_s:g} s"
            out["notes"].append(note)
            print(note, flush=True)
        else:
            out["start"]["proxy_s"] = proxy.start_s
            print(f"start: proxy {proxy.start_s:.2f} s", flush=True)
            try:
                client = http_client(session, [f"{proxy.base}/v1"], PROXY_KEY)
                await measure("proxy", client, sizes, proxy.proc.pid, rows)
                client = messages_client(session, proxy.base, PROXY_KEY)
                pid = proxy.proc.pid
                await measure("proxy /v1/messages", client, sizes, pid, rows, c32_only=True)
                out["proxy_rss_mb"] = rss_mb(proxy.proc.pid)
            finally:
                proxy.stop()
    return out


# -- the report -------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def line(r: dict[str, Any]) -> str:
    """One row as a progress line."""
    return (
        f"{r['system']:10} c{r['concurrency']:<3} {r['succeeded']}/{r['requests']} ok  "
        f"p50 {_f(r['p50_ms'])} ms  p99 {_f(r['p99_ms'])} ms  {r['req_per_s']:.1f} req/s  "
        f"server CPU {_f(r['server_cpu_ms_per_req'], 2)} ms/req  "
        f"client CPU {r['client_cpu_ms_per_req']:.2f} ms/req"
    )


def _row(results: dict[str, Any], system: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (r for r in results["rows"] if r["system"] == system and r["concurrency"] == concurrency),
        None,
    )


def targets(results: dict[str, Any]) -> list[tuple[str, float | None, str, bool | None]]:
    """(target, measured ratio or figure, wanted, met); None where it could not be had."""
    out: list[tuple[str, float | None, str, bool | None]] = []

    def ratio(name: str, a: float | None, b: float | None, wanted: str, op: str) -> None:
        value = a / b if a is not None and b else None
        bound = float(wanted.split()[-1].rstrip("×"))
        met = None if value is None else (value <= bound if op == "le" else value >= bound)
        out.append((name, value, wanted, met))

    serve32, raw32 = _row(results, "serve", 32), _row(results, "raw", 32)
    serve64, proxy64 = _row(results, "serve", 64), _row(results, "proxy", 64)
    ratio(
        "32 concurrent: serve p50 ÷ raw p50",
        serve32 and serve32["p50_ms"],
        raw32 and raw32["p50_ms"],
        "≤ 1.25×",
        "le",
    )
    ratio(
        "64 concurrent: serve req/s ÷ proxy req/s",
        serve64 and serve64["req_per_s"],
        proxy64 and proxy64["req_per_s"],
        "≥ 4×",
        "ge",
    )
    serve_m, proxy_m = (
        _row(results, "serve /v1/messages", 32),
        _row(results, "proxy /v1/messages", 32),
    )
    ratio(
        "32 concurrent `/v1/messages`: serve req/s ÷ proxy req/s",
        serve_m and serve_m["req_per_s"],
        proxy_m and proxy_m["req_per_s"],
        "≥ 4×",
        "ge",
    )
    ratio(
        "64 concurrent: serve CPU/request ÷ proxy's (process tree)",
        serve64 and serve64["server_cpu_ms_per_req"],
        proxy64 and proxy64["server_cpu_ms_per_req"],
        "≤ 0.25×",
        "le",
    )
    start = results["start"]
    ratio(
        f"start until `/health` answers ÷ `python -c '{IMPORTS}'`",
        start["serve_s"],
        start["imports_s"],
        "≤ 4×",
        "le",
    )
    rss = results.get("serve_rss") or []
    if rss:
        first, second = rss[1], rss[2]
        out.append(
            (
                f"serve RSS after {first['after']} requests (MB)",
                first["rss_mb"],
                "≤ 100",
                first["rss_mb"] <= 100,
            )
        )
        growth = second["rss_mb"] - first["rss_mb"]
        out.append(
            (
                f"serve RSS growth from {first['after']} to {second['after']} requests (MB)",
                growth,
                "≈ 0 (≤ 5% of the first)",
                growth <= 0.05 * first["rss_mb"],
            )
        )
    return out


def markdown(results: dict[str, Any], command: str) -> list[str]:
    """The Gateway section of docs/benchmarks.md."""
    start = results["start"]
    sizes = results["meta"]["sizes"]
    lines = [
        DOCS_MARK,
        "",
        "## Gateway: `lbprovider serve` vs the LiteLLM proxy vs in-process vs raw",
        "",
        f"Generated by `{command}` ({results['meta']['date']}, "
        f"{results['meta']['machine']}; the 2 cores are shared with other processes that",
        "ran at the same time, so absolute figures move between runs — the ratios are what to",
        "compare). Three `lbprovider sim` processes stream 20 chunks 10 ms apart",
        f"(`{HEALTHY}`); one load balancer, round-robin over the three, `memory://` state:",
        "",
        "- **raw**: aiohttp straight to the sims (round-robin), `json.loads` per SSE line;",
        "- **in-process**: `LoadBalancingProvider.stream` in the measuring process;",
        "- **serve**: `lbprovider serve --port 0 --profile bench` (a subprocess);",
        "- **proxy**: the LiteLLM proxy with docs/litellm-proxy.yaml's settings serving",
        "  `lb/bench` (our custom provider; a subprocess).",
        "",
        "serve and the proxy run one after the other, never both; their client is the same",
        "aiohttp code as raw's, posting a streamed `/v1/chat/completions` (with",
        "`stream_options.include_usage`); the `/v1/messages` rows post a streamed Anthropic",
        "Messages request to the same server (same members: serve translates to the OpenAI",
        "members, the proxy goes through its Anthropic adapter to `lb/bench`), concurrency 32",
        f"only. Each system is warmed first; then {sizes['c32']} requests at",
        f"concurrency 32 and {sizes['c64']} at 64. *Server CPU* is the server's process tree",
        "(`/proc` utime + stime of the process and its descendants, read before and after the",
        "load) per request; *client CPU* is the measuring process's own (for in-process it",
        "includes the engine).",
        "",
        "| system | concurrency | ok | p50 / p99 ms | TTFC p50 / p99 ms | req/s | "
        "server CPU ms/req | client CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results["rows"], key=lambda r: (r["concurrency"], SYSTEMS.index(r["system"]))):
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['succeeded']}/{r['requests']} | "
            f"{_f(r['p50_ms'])} / {_f(r['p99_ms'])} | {_f(r['ttfc_p50_ms'])} / "
            f"{_f(r['ttfc_p99_ms'])} | {r['req_per_s']:.1f} | "
            f"{_f(r['server_cpu_ms_per_req'], 2)} | {r['client_cpu_ms_per_req']:.2f} |"
        )
    lines += [
        "",
        f"Start (median of {start['runs']}, alternating): `lbprovider serve` until `/health` "
        f"answers {start['serve_s']:.2f} s; a fresh `python -c '{IMPORTS}'` "
        f"{start['imports_s']:.2f} s"
        + (
            f"; the proxy until `/health/liveliness` answers {start['proxy_s']:.2f} s (one start)"
            if "proxy_s" in start
            else ""
        )
        + ".",
    ]
    rss = results.get("serve_rss") or []
    if rss:
        lines.append(
            "RSS of the serve process: "
            + ", ".join(f"{r['rss_mb']:.1f} MB after {r['after']} requests" for r in rss)
            + " (a fresh process)"
            + (
                f"; the proxy's after its run: {results['proxy_rss_mb']:.0f} MB."
                if "proxy_rss_mb" in results
                else "."
            )
        )
    lines += ["", "| target | measured | wanted | |", "|---|---|---|---|"]
    for name, value, wanted, met in targets(results):
        shown = "-" if value is None else f"{value:.2f}" + ("×" if "×" in wanted else "")
        verdict = "not measured" if met is None else "met" if met else "missed"
        lines.append(f"| {name} | {shown} | {wanted} | {verdict} |")
    for note in results["notes"]:
        lines += ["", f"*{note}.*"]
    if NOTES.exists():
        lines += ["", NOTES.read_text().rstrip()]
    return [*lines, ""]


def write_docs(section: list[str]) -> None:
    """Replace the Gateway section of docs/benchmarks.md (or add it), keeping the Routing
    section that follows it (benchmarks/routing.py's)."""
    text = DOCS.read_text()
    tail = text[text.index(ROUTING_MARK) :] if ROUTING_MARK in text else ""
    text = text.removesuffix(tail)
    if DOCS_MARK in text:
        text = text[: text.index(DOCS_MARK)]
    body = "\n".join(section).rstrip() + "\n"
    DOCS.write_text(text.rstrip() + "\n\n" + body + ("\n" + tail if tail else ""))


def main() -> None:
    """Parse the options, run, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a quarter of the requests")
    size.add_argument("--tiny", action="store_true", help="a handful of requests (CI smoke)")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/)")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md's section")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/benchmarks.md's section from benchmarks/results/gateway.json",
    )
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((args.out or RESULTS / "gateway.json").read_text())
        write_docs(markdown(results, results["meta"].get("command", FULL_COMMAND)))
        print(f"wrote {DOCS}")
        return
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    command = FULL_COMMAND + (" --tiny" if args.tiny else " --quick" if args.quick else "")
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lbprovider-gw-") as tmp:
        urls = [start_sim(stack, HEALTHY) for _ in range(3)]
        results = asyncio.run(run_all(sizes, Path(tmp), urls))
    results["meta"]["command"] = command
    out = args.out or RESULTS / ("gateway-tiny.json" if args.tiny else "gateway.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    section = markdown(results, command)
    print("\n".join(section[2:]))
    if args.docs:
        write_docs(section)
        print(f"wrote {out} and {DOCS}")
    else:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
