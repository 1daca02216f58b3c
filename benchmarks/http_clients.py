"""Which HTTP client the native transport uses: CPU per streamed request and import cost.

    .venv/bin/python benchmarks/http_clients.py [--requests 100]

Each client streams the same answers from one ``lbprovider sim`` process on loopback and
parses every SSE ``data:`` line with ``json.loads``, as the native transport must; each
runs in a fresh interpreter so its import is measured too.  Figures are CPU seconds
of the client process only (the sim runs elsewhere); compare them as ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# httpx-sse is not a dependency of any extra: the comparison needs it installed by hand.
HAS_HTTPX_SSE = importlib.util.find_spec("httpx_sse") is not None

WORKLOADS = {
    "20 chunks, 10 ms apart": "chunks=20,chunk_delay=0.01",
    "200 chunks, back to back": "chunks=200,text=" + "x" * 400,
}

CLIENT = r"""
import asyncio, json, sys, time
t0 = time.process_time()
kind, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "aiohttp":
    import aiohttp
else:
    import httpx, httpx_sse
import_cpu = time.process_time() - t0
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}}
HEADERS = {"Authorization": "Bearer sk-bench"}

async def main():
    chunks = 0
    if kind == "aiohttp":
        async with aiohttp.ClientSession() as s:
            async def one():
                nonlocal chunks
                async with s.post(url + "/chat/completions", json=BODY, headers=HEADERS) as r:
                    async for line in r.content:
                        if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                            json.loads(line[6:]); chunks += 1
            await one()
            t = time.process_time()
            for _ in range(n):
                await one()
    else:
        async with httpx.AsyncClient(timeout=None) as c:
            async def one():
                nonlocal chunks
                async with httpx_sse.aconnect_sse(c, "POST", url + "/chat/completions",
                                                  json=BODY, headers=HEADERS) as es:
                    async for ev in es.aiter_sse():
                        if ev.data != "[DONE]":
                            json.loads(ev.data); chunks += 1
            await one()
            t = time.process_time()
            for _ in range(n):
                await one()
    return time.process_time() - t, chunks

cpu, chunks = asyncio.run(main())
print(json.dumps({"import_cpu_s": import_cpu, "cpu_s": cpu, "chunks": chunks}))
"""


def run(kind: str, url: str, n: int) -> dict[str, float]:
    """One client in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", CLIENT, kind, url, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main(n: int, rounds: int, *, write: bool = True) -> None:
    """Alternate the clients ``rounds`` times per workload; report medians (and save them
    unless ``write`` is False)."""
    lines = [
        f"# HTTP clients for the native transport ({time.strftime('%Y-%m-%d')})",
        "",
        f"`.venv/bin/python benchmarks/http_clients.py --requests {n}`: {n} sequential "
        f"streamed requests per run, {rounds} runs per client alternating, medians.",
        "",
        "| workload | client | import CPU ms | CPU ms per request | CPU µs per chunk |",
        "|---|---|---|---|---|",
    ]
    for label, spec in WORKLOADS.items():
        sim = subprocess.Popen(
            [sys.executable, "-m", "lbprovider.cli", "sim", "--behavior", spec, "--for", "900"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sim.stdout is not None
            url = sim.stdout.readline().split()[3]
            runs: dict[str, list[dict[str, float]]] = {"aiohttp": []}
            if HAS_HTTPX_SSE:
                runs["httpx + httpx-sse"] = []
            for _ in range(rounds):
                runs["aiohttp"].append(run("aiohttp", url, n))
                if HAS_HTTPX_SSE:
                    runs["httpx + httpx-sse"].append(run("httpx", url, n))
        finally:
            sim.terminate()
            sim.wait(10)
        for client, results in runs.items():
            imp = statistics.median(r["import_cpu_s"] for r in results) * 1000
            per_req = statistics.median(r["cpu_s"] for r in results) / n * 1000
            chunks = results[0]["chunks"] / (n + 1)
            lines.append(
                f"| {label} | {client} | {imp:.0f} | {per_req:.2f} | "
                f"{per_req * 1000 / chunks:.0f} |"
            )
            print(lines[-1], flush=True)
    if not HAS_HTTPX_SSE:
        print("httpx-sse is not installed: httpx left out", flush=True)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "http_clients.md").write_text("\n".join(lines) + "\n")
        print(f"wrote {RESULTS / 'http_clients.md'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tiny", action="store_true", help="a smoke run: 3 requests, 1 round, writes nothing"
    )
    args = parser.parse_args()
    if args.tiny:
        main(3, 1, write=False)
    else:
        main(args.requests, args.rounds)
