"""The readable stats report (``lbprovider stats`` without ``--json``, and the demo).

Close to llxprt-code's ``/stats lb``: per member its counters, average latency, current
TPM and breaker state (coloured), first-chunk latency percentiles and skips — as two
narrow tables, so that nothing is cut at 80 columns.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["PipeConsole", "console_for_tables", "render_stats"]

_STATE_STYLE = {"closed": "green", "half-open": "yellow", "open": "red"}


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _when(epoch_ms: int | None) -> str:
    """A local time, with the date when it is not today."""
    if epoch_ms is None:
        return ""
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000)
    if moment.date() == dt.date.today():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class PipeConsole(Console):
    """A rich console that leaves a closed pipe to the command line's exit-code map."""

    def on_broken_pipe(self) -> None:
        """Raise the error again: rich's own handling exits with 1, and SPEC §8 wants a
        closed stdout pipe (``| head``) to end quietly with 0, decided in one place
        (``lbprovider.cli.exit_code_for``)."""
        self.quiet = True
        raise BrokenPipeError


def console_for_tables(*, stderr: bool = False, pipe_width: int | None = 100) -> Console:
    """A console for the tables: the terminal's width, or ``pipe_width`` columns into a
    pipe (None: ``$COLUMNS``, else 80)."""
    console = PipeConsole(stderr=stderr)
    if not console.is_terminal and pipe_width is not None:
        console = PipeConsole(stderr=stderr, width=pipe_width)
    return console


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _breaker_text(b: dict[str, Any]) -> Text:
    state = Text(b["state"], style=_STATE_STYLE.get(b["state"], ""))
    if b.get("manual"):
        state.append(" (benched)", style="bold")
    if b["state"] == "open" and b.get("recoveryAt"):
        state.append(f" until {_when(b['recoveryAt'])}")
    elif b["state"] == "closed" and b.get("failures"):
        state.append(f" ({_plural(b['failures'], 'recent failure')})")
    return state


def render_stats(stats: dict[str, Any], console: Console) -> None:
    """Print one load balancer's stats: a header line, then two narrow tables — what
    each member did, and how healthy it is — so that it reads at 80 columns.

    Traffic: times served, attempts (requests), successes, failures, first-chunk timeouts,
    streams interrupted after their first chunk, skips, tokens, current TPM.  Health:
    average attempt latency, first-chunk latency p50/p95, breaker state.
    """
    last = stats.get("lastSelected")
    header = (
        f"[bold]{stats['profileName']}[/bold] ({stats['policy']}) — "
        f"{_plural(stats['totalRequests'], 'request')}"
    )
    if stats.get("failbacks"):
        header += f", {_plural(stats['failbacks'], 'fail-back')}"
    if last:
        header += f", last served by [bold]{last}[/bold] ({stats.get('lastSelectedModel')})"
    console.print(header)
    traffic = Table(header_style="bold", box=None, padding=(0, 1))
    for column in (
        "member",
        "served",
        "req",
        "ok",
        "failed",
        "t/o",
        "cut",
        "skips",
        "tokens",
        "TPM",
    ):
        traffic.add_column(
            column,
            justify="left" if column == "member" else "right",
            overflow="fold",
            no_wrap=column != "member",
        )
    health = Table(header_style="bold", box=None, padding=(0, 1))
    health.add_column("member", overflow="fold")
    health.add_column("avg latency", justify="right", no_wrap=True)
    health.add_column("first chunk p50 / p95", justify="right", no_wrap=True)
    health.add_column("breaker", overflow="fold")
    for name in stats["members"]:
        m = stats["backendMetrics"][name]
        traffic.add_row(
            name,
            str(stats["profileCounts"].get(name, 0)),
            str(m["requests"]),
            str(m["successes"]),
            str(m["failures"]),
            str(m["timeouts"]),
            str(m.get("interruptions", 0)),
            str(m.get("skips", 0)),
            str(m["tokens"]),
            f"{stats['currentTPM'].get(name, 0):.0f}",
        )
        health.add_row(
            name,
            _ms(m["avgLatencyMs"]) if m["requests"] else "-",
            f"{_ms(m.get('firstChunkP50Ms'))} / {_ms(m.get('firstChunkP95Ms'))}",
            _breaker_text(stats["circuitBreakerStates"][name]),
        )
    console.print(traffic)
    console.print(health)
    console.print()
