"""``lbprovider top``: a live view of load balancers, read from the state store (SPEC §8).

The store is shared by every process and replica, so the view is the fleet's.  A frame is
built from stats reports (:func:`lbprovider.ledger.report`): per load balancer a header
line (its traffic of the last 60 s, affinity and hedges when it has any), a table of its
members — requests and failures of the last 60 s, breaker, first-chunk p50/p95, TPM, cache
tokens — and, when some member has them, a second table of rate-limit headroom, headroom
skips and lost hedges.  Each table stays within 80 columns: numbers are abbreviated
(``12.3k``) and a long member name folds onto a second line rather than being cut.

Keys the stats report may not have yet (cache tokens, headroom, hedges, affinity) are read
with a default, so the view works with records written by older versions too.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["render_frame", "run"]

Report = Mapping[str, Any]

_STATE_STYLE = {"closed": "green", "half-open": "yellow", "open": "red"}


def _count(n: float) -> str:
    """A count in at most 5 characters: 999, 12.3k, 4.5M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            scaled = n / limit
            return f"{scaled:.1f}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{n:.0f}"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    return f"{ms / 1000:.1f}s" if ms < 10_000 else f"{ms / 1000:.0f}s"


def _span(seconds: float) -> str:
    """A time left, in its largest unit: 42s, 14m, 3h, 2d."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _clock(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s).strftime("%H:%M:%S")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _breaker(b: Mapping[str, Any], now: float) -> Text:
    state = str(b.get("state", "closed"))
    text = Text("benched" if b.get("manual") else state, style=_STATE_STYLE.get(state, ""))
    recovery = b.get("recoveryAt")
    if state == "open" and recovery:
        text.append(f" {_span(recovery / 1000 - now)}")
    return text


def _recent(m: Mapping[str, Any]) -> tuple[int, int]:
    recent = m.get("recent60s") or {}
    return int(recent.get("requests", 0)), int(recent.get("failures", 0))


def _header(report: Report) -> Text:
    members = report["members"]
    metrics = report["backendMetrics"]
    requests = failures = 0
    for name in members:
        r, f = _recent(metrics.get(name, {}))
        requests += r
        failures += f
    text = Text()
    text.append(str(report["profileName"]), style="bold")
    text.append(f" ({report['policy']}) · last 60 s: {_plural(requests, 'attempt')}")
    if failures:
        text.append(f", {failures} failed", style="red")
    last = report.get("lastSelected")
    if last:
        text.append(" · last served by ")
        text.append(str(last), style="bold")
    extras = []
    hits, misses = report.get("affinityHits", 0), report.get("affinityMisses", 0)
    if hits or misses:
        misses_text = f"{misses} miss" + ("" if misses == 1 else "es")
        extras.append(f"affinity {_plural(hits, 'hit')} / {misses_text}")
    hedges = report.get("hedges", 0)
    if hedges:
        extras.append(f"{_plural(hedges, 'hedge')} ({report.get('hedgeWins', 0)} won)")
    panic = report.get("panicProbes", 0)
    if panic:
        extras.append(_plural(panic, "panic probe"))
    if report.get("failbacks"):
        extras.append(_plural(report["failbacks"], "fail-back"))
    if extras:
        text.append("\n  " + " · ".join(extras))
    return text


def _traffic(report: Report, now: float) -> Table:
    table = Table(header_style="bold", box=None, padding=(0, 1), pad_edge=False)
    table.add_column("member", overflow="fold")
    for header in ("req\n60s", "fail\n60s"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("breaker", no_wrap=True)
    table.add_column("first chunk\np50/p95", justify="right", no_wrap=True)
    table.add_column("TPM", justify="right", no_wrap=True)
    table.add_column("cache\nread/write", justify="right", no_wrap=True)
    metrics, breakers = report["backendMetrics"], report["circuitBreakerStates"]
    for name in report["members"]:
        m = metrics.get(name, {})
        requests, failures = _recent(m)
        table.add_row(
            name,
            _count(requests),
            Text(_count(failures), style="red" if failures else ""),
            _breaker(breakers.get(name, {}), now),
            f"{_duration(m.get('firstChunkP50Ms'))}/{_duration(m.get('firstChunkP95Ms'))}",
            _count(report.get("currentTPM", {}).get(name, 0)),
            f"{_count(m.get('cacheReadTokens', 0))}/{_count(m.get('cacheWriteTokens', 0))}",
        )
    return table


def _rate_limit(limit: Mapping[str, Any] | None) -> str:
    if not limit:
        return "-"
    parts = []
    if limit.get("remainingRequests") is not None:
        parts.append(f"{_count(limit['remainingRequests'])} req")
    if limit.get("remainingTokens") is not None:
        parts.append(f"{_count(limit['remainingTokens'])} tok")
    text = " / ".join(parts) or "-"
    if limit.get("resetAt"):
        text += f" until {_clock(limit['resetAt'] / 1000)}"
    return text


def _headroom(report: Report) -> Table | None:
    """Rate-limit headroom, headroom skips and lost hedges, when some member has any."""
    metrics = report["backendMetrics"]
    rows = [
        (name, m.get("rateLimit"), m.get("headroomSkips", 0), m.get("hedgesLost", 0))
        for name in report["members"]
        for m in (metrics.get(name, {}),)
    ]
    if not any(limit or skips or lost for _, limit, skips, lost in rows):
        return None
    table = Table(header_style="bold", box=None, padding=(0, 1), pad_edge=False)
    table.add_column("member", overflow="fold")
    table.add_column("rate limit left", overflow="fold")
    table.add_column("headroom\nskips", justify="right", no_wrap=True)
    table.add_column("hedges\nlost", justify="right", no_wrap=True)
    for name, limit, skips, lost in rows:
        table.add_row(name, _rate_limit(limit), _count(skips), _count(lost))
    return table


def render_frame(
    reports: Sequence[Report], *, now: float, footer: str | None = None
) -> RenderableType:
    """One frame of ``top``: a title line with the time, then each load balancer."""
    title = Text("lbprovider top", style="bold")
    title.append(f" · {_clock(now)}")
    if footer:
        title.append(f" · {footer}", style="dim")
    parts: list[RenderableType] = [title]
    if not reports:
        parts.append(Text("no recorded state yet (waiting for a first request)"))
    for report in reports:
        parts += [Text(), _header(report), _traffic(report, now)]
        headroom = _headroom(report)
        if headroom is not None:
            parts.append(headroom)
    return Group(*parts)


def run(
    load: Callable[[float], Sequence[Report]],
    *,
    console: Console,
    interval_s: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    notice: Callable[[], str | None] = lambda: None,
) -> None:
    """Redraw the reports ``load(now)`` gives every ``interval_s`` until Ctrl-C, then return.

    On a terminal the frame is redrawn in place; into a pipe or a file, each frame is
    printed after the last (a log of frames).  ``notice`` may add a line to a frame (the
    state store is unreachable, say).
    """
    footer = f"every {interval_s:g} s, Ctrl-C to quit"

    def frame() -> RenderableType:
        now = clock()
        rendered = render_frame(load(now), now=now, footer=footer)
        note = notice()
        return rendered if note is None else Group(rendered, Text(note, style="yellow"))

    try:
        if not console.is_terminal:
            while True:
                console.print(frame())
                console.print()
                sleep(interval_s)
        with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
            while True:
                live.update(frame(), refresh=True)
                sleep(interval_s)
    except KeyboardInterrupt:
        return
