"""``lbprovider demo``: the whole system on three simulated backends on loopback.

A healthy backend, a flaky one (503 half the time, seeded) and one that stalls
before its first chunk.  Two load balancers over them (sticky failover and
round-robin, breakers on, a first-chunk timeout) each take a bounded workload
over real HTTP through the native transport (what every ``openai`` member uses);
then the stats of each and a plain-words summary.
No keys, no network; profiles and state live in a temp dir that is removed
(unless ``--state-dir``), and the backends stop with the demo.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lbprovider.breaker import BreakerState
from lbprovider.errors import LBError
from lbprovider.events import Event, EventKind, Outcome
from lbprovider.profiles.files import atomic_write_json
from lbprovider.profiles.store import ProfileStore
from lbprovider.provider import LoadBalancingProvider
from lbprovider.report import console_for_tables, render_stats
from lbprovider.sim import SimServer, serve
from lbprovider.state.sqlite import SQLiteStore

__all__ = ["run_demo"]

TIMEOUT_MS = 400
SETTINGS = {
    "circuit_breaker_enabled": True,
    "circuit_breaker_failure_threshold": 2,
    "circuit_breaker_recovery_timeout_ms": 60_000,
    "timeout_ms": TIMEOUT_MS,
    "failover_retry_count": 2,
    "failover_retry_delay_ms": 50,
}
BACKENDS = {
    "healthy": "chunks=8,chunk_delay=0.01,text=Here is a steady answer from the healthy backend.",
    "flaky": "flaky=0.5,seed=11,fail_status=503,chunks=8,text=The flaky backend got this one.",
    "stalled": "stall_first_chunk=30",
}
PROFILES = {
    "demo-failover": ("failover", ["stalled", "flaky", "healthy"]),
    "demo-roundrobin": ("roundrobin", ["healthy", "flaky", "stalled"]),
}
CONCURRENCY = 3


def run_demo(*, requests: int = 12, as_json: bool = False, state_dir: Path | None = None) -> None:
    """Run the demo; print stats tables (or JSON) and a summary."""
    console = console_for_tables(stderr=as_json)
    if state_dir is not None:
        asyncio.run(_demo(state_dir, requests, as_json, console))
        return
    with tempfile.TemporaryDirectory(prefix="lbprovider-demo-") as tmp:
        asyncio.run(_demo(Path(tmp), requests, as_json, console))


async def _demo(root: Path, requests: int, as_json: bool, console: Console) -> None:
    profiles_dir = root / "profiles"
    async with (
        serve(BACKENDS["healthy"]) as healthy,
        serve(BACKENDS["flaky"]) as flaky,
        serve(BACKENDS["stalled"]) as stalled,
    ):
        servers = {"healthy": healthy, "flaky": flaky, "stalled": stalled}
        _write_profiles(profiles_dir, servers)
        console.print(
            f"[bold]lbprovider demo[/bold]: backends on loopback — healthy {healthy.url}, "
            f"flaky (503 half the time) {flaky.url}, stalled (no first chunk) {stalled.url}; "
            f"first-chunk timeout {TIMEOUT_MS} ms, breakers open after 2 failures."
        )
        store = SQLiteStore(root / "state.db")
        profiles = ProfileStore([profiles_dir], write_dir=profiles_dir)
        reports: list[dict[str, Any]] = []
        summaries: list[str] = []
        try:
            for name in PROFILES:
                events: list[Event] = []
                lb = LoadBalancingProvider.from_profile(
                    name, profiles=profiles, store=store, on_event=events.append
                )
                served, errors = await _workload(lb, requests, console)
                reports.append(lb.stats())
                summaries.append(_summary(name, requests, served, errors, events))
        finally:
            store.close()
    if as_json:
        print(json.dumps(reports, indent=2))
    else:
        for report in reports:
            render_stats(report, console)
    console.print()
    for line in summaries:
        console.print(line)


def _write_profiles(directory: Path, servers: dict[str, SimServer]) -> None:
    for name, server in servers.items():
        atomic_write_json(
            directory / f"{name}.json",
            {
                "version": 1,
                "provider": "openai",
                "model": f"sim-{name}",
                "ephemeralSettings": {"base-url": server.url, "auth-key": "sk-sim-demo-not-a-key"},
            },
        )
    for name, (policy, members) in PROFILES.items():
        atomic_write_json(
            directory / f"{name}.json",
            {
                "version": 1,
                "type": "loadbalancer",
                "policy": policy,
                "profiles": members,
                "modelParams": {},
                "ephemeralSettings": SETTINGS,
            },
        )


async def _workload(
    lb: LoadBalancingProvider, requests: int, console: Console
) -> tuple[Counter[str], list[LBError]]:
    served: Counter[str] = Counter()
    errors: list[LBError] = []
    gate = asyncio.Semaphore(CONCURRENCY)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{lb.name} ({lb.config.policy.value})", total=requests)

        async def one(i: int) -> None:
            async with gate:
                try:
                    result = await lb.complete(
                        [{"role": "user", "content": f"demo request {i + 1}"}]
                    )
                    served[result.backend or "?"] += 1
                except LBError as exc:
                    errors.append(exc)
                progress.advance(task)

        await asyncio.gather(*(one(i) for i in range(requests)))
    return served, errors


def _times(counts: Counter[str | None]) -> str:
    return ", ".join(f"{m} {n} time{'s' * (n != 1)}" for m, n in counts.items())


def _summary(
    name: str, requests: int, served: Counter[str], errors: list[LBError], events: list[Event]
) -> str:
    by = ", ".join(f"{m} {n}" for m, n in served.most_common())
    failovers = Counter(e.member for e in events if e.kind is EventKind.FAILOVER)
    timeouts = Counter(
        e.member for e in events if e.kind is EventKind.ATTEMPT and e.outcome == Outcome.TIMEOUT
    )
    opened = Counter(
        e.member for e in events if e.kind is EventKind.BREAKER and e.outcome == BreakerState.OPEN
    )
    skips = Counter(e.member for e in events if e.kind is EventKind.SKIP)
    parts = [
        f"[bold]{name}[/bold]: {sum(served.values())} of {requests} requests served"
        + (f" ({by})" if by else "")
        + "."
    ]
    if timeouts:
        parts.append(
            f"First-chunk timeouts: {_times(timeouts)} (no content within "
            f"{TIMEOUT_MS} ms; the stream was closed and the next member tried)."
        )
    if failovers:
        parts.append(f"Failed over from {_times(failovers)}.")
    if opened:
        parts.append(f"Breakers opened: {_times(opened)}.")
    if skips:
        parts.append(
            f"Skipped while their breakers were open: {_times(skips)}"
            + (
                ""
                if opened
                else " (breakers belong to the member, so those opened "
                "under the other profile apply here too)"
            )
            + "."
        )
    if errors:
        parts.append(f"{len(errors)} request(s) failed: {errors[0]}")
    return " ".join(parts)
