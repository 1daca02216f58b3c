"""The readable stats table (``lbprovider stats`` without ``--json``, and the demo).

Close to llxprt-code's ``/stats lb``: one row per member with its counters, average
latency, current TPM and breaker state (coloured), plus first-chunk latency
percentiles and skips.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["console_for_tables", "render_stats"]

_STATE_STYLE = {"closed": "green", "half-open": "yellow", "open": "red"}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _when(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return ""
    return dt.datetime.fromtimestamp(epoch_ms / 1000).strftime("%H:%M:%S")


def console_for_tables(*, stderr: bool = False) -> Console:
    """A console that does not squeeze the table when output is not a terminal."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=max(console.width, 150))
    return console


def render_stats(stats: dict[str, Any], console: Console) -> None:
    """Print one load balancer's stats as a table with a one-line header.

    Columns: times served, attempts (req), successes, failures, first-chunk timeouts
    (t/o), skips, tokens, average attempt latency, first-chunk latency, current TPM,
    breaker state.
    """
    last = stats.get("lastSelected")
    header = (
        f"[bold]{stats['profileName']}[/bold] ({stats['policy']}) — "
        f"{stats['totalRequests']} requests"
    )
    if last:
        header += f", last served by [bold]{last}[/bold] ({stats.get('lastSelectedModel')})"
    table = Table(title=header, title_justify="left", header_style="bold")
    for column in (
        "member",
        "served",
        "requests",
        "ok",
        "failed",
        "timeouts",
        "skips",
        "tokens",
        "avg latency",
        "first chunk p50/p95",
        "TPM",
        "breaker",
    ):
        table.add_column(column, justify="left" if column in ("member", "breaker") else "right")
    for name in stats["members"]:
        m = stats["backendMetrics"][name]
        b = stats["circuitBreakerStates"][name]
        state = Text(b["state"], style=_STATE_STYLE.get(b["state"], ""))
        if b.get("manual"):
            state.append(" (manual)", style="bold")
        if b["state"] != "closed" and b.get("recoveryAt"):
            state.append(f" until {_when(b['recoveryAt'])}")
        elif b.get("failures"):
            state.append(f" ({b['failures']} recent failures)")
        table.add_row(
            name,
            str(stats["profileCounts"].get(name, 0)),
            str(m["requests"]),
            str(m["successes"]),
            str(m["failures"]),
            str(m["timeouts"]),
            str(m.get("skips", 0)),
            str(m["tokens"]),
            _ms(m["avgLatencyMs"]) if m["requests"] else "-",
            f"{_ms(m.get('firstChunkP50Ms'))} / {_ms(m.get('firstChunkP95Ms'))}",
            f"{stats['currentTPM'].get(name, 0):.0f}",
            state,
        )
    console.print(table)
