"""The ``lbprovider`` command line (SPEC §8), also mounted by the ``llm`` plugin as ``llm lb``.

Exit codes: 0 ok, 1 a request failed, 2 bad input, 130 interrupted (Ctrl-C); a closed
stdout pipe (``| head``) ends quietly with 0.  :func:`exit_code_for` is the one place that
maps an exception to a code.  Warnings, errors and ``-v`` logs go to stderr.  Nothing here
imports litellm or pydantic at module level: ``--help`` must start fast, and each command
imports what it uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lbprovider.errors import ConfigError, LBError

if TYPE_CHECKING:
    from lbprovider.profiles.store import ProfileStore

__all__ = ["cli", "main"]

EXIT_OK = 0
EXIT_REQUEST_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def exit_code_for(exc: BaseException) -> tuple[int, str | None]:
    """The exit code for an exception, and what to say on stderr (None: nothing)."""
    if isinstance(exc, ConfigError):
        return EXIT_BAD_INPUT, f"error: {exc}"
    if isinstance(exc, LBError):
        return EXIT_REQUEST_FAILED, f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, BrokenPipeError):
        return EXIT_OK, None  # `lbprovider stats | head`: the reader has what it wanted
    if isinstance(exc, OSError):
        # The environment, not a bug: a home that is a file, a full disk, a busy port.
        where = f" {exc.filename}" if exc.filename else ""
        return EXIT_BAD_INPUT, f"error:{where}: {exc.strerror or exc}"
    raise exc


class LBGroup(click.Group):
    """A click group that turns our errors into a message on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            code, message = exit_code_for(exc)
            if isinstance(exc, BrokenPipeError):
                _silence_stdout()
            if message:
                click.echo(message, err=True)
            ctx.exit(code)


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so exit's flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _store(ctx: click.Context) -> ProfileStore:
    """The profile store of the environment (search path from env and working dir)."""
    from lbprovider.profiles.store import ProfileStore

    return ProfileStore()


def _warn(lines: Any) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


@click.group(cls=LBGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lbprovider", prog_name="lbprovider")
def cli() -> None:
    """Load-balance LLM requests over several backends (round-robin or sticky failover)."""


@cli.group(cls=LBGroup)
def profiles() -> None:
    """List, show, validate and edit profiles."""


@profiles.command("list")
@click.pass_context
def profiles_list(ctx: click.Context) -> None:
    """List every profile on the search path, with its kind and file."""
    store = _store(ctx)
    entries = store.entries()
    if not entries:
        searched = ", ".join(str(d) for d in store.dirs)
        click.echo(f"no profiles found (searched {searched})", err=True)
        return
    results = {v.name: v for v in store.validate([e.name for e in entries])}
    width = max(len(e.name) for e in entries)
    for e in entries:
        v = results[e.name]
        if not v.ok:
            kind = "INVALID (run 'profiles validate')"
        elif v.warnings:
            kind = f"{v.kind} (warnings: run 'profiles validate')"
        else:
            kind = v.kind
        click.echo(f"{e.name:<{width}}  {kind}  {e.path}")
        for shadowed in e.shadowed:
            click.echo(f"{'':<{width}}  (shadows {shadowed})")


@profiles.command("show")
@click.argument("name")
@click.pass_context
def profiles_show(ctx: click.Context, name: str) -> None:
    """Print profile NAME as JSON, keys redacted to their last 4 characters."""
    store = _store(ctx)
    path = store.path_of(name)
    data = store.read_raw(path)
    click.echo(f"# {path}", err=True)
    from lbprovider.redaction import redact_profile

    click.echo(json.dumps(redact_profile(data), indent=2, ensure_ascii=False))


@profiles.command("validate")
@click.argument("names", nargs=-1)
@click.pass_context
def profiles_validate(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Check NAMEs (default: every profile) and report each problem. Exit 2 on any."""
    store = _store(ctx)
    results = store.validate(list(names) if names else None)
    if not results:
        searched = ", ".join(str(d) for d in store.dirs)
        click.echo(f"no profiles found (searched {searched})", err=True)
        return
    failed = 0
    for r in results:
        if r.ok:
            click.echo(f"ok     {r.name}: {r.kind}")
        else:
            failed += 1
            for err in r.errors:
                click.echo(f"error  {r.name}: {err}", err=True)
        for w in r.warnings:
            click.echo(f"warn   {r.name}: {w}", err=True)
    if failed:
        click.echo(f"{failed} of {len(results)} profile(s) have errors", err=True)
        ctx.exit(EXIT_BAD_INPUT)


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {item!r} is not KEY=VALUE",
                field="--set",
                hint="for example --set timeout_ms=8000",
            )
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        settings[key.strip()] = value
    return settings


@profiles.command("save-lb")
@click.argument("name")
@click.argument("members", nargs=-1, required=True)
@click.option("--policy", "-P", required=True, help="roundrobin or failover")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="a load-balancer setting (JSON value), repeatable",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="write a new load balancer here (default: its members' directory when they share "
    "one, else <home>/profiles)",
)
@click.pass_context
def profiles_save_lb(
    ctx: click.Context,
    name: str,
    members: tuple[str, ...],
    policy: str,
    settings: tuple[str, ...],
    directory: Path | None,
) -> None:
    """Create or replace load balancer NAME over MEMBERS."""
    store = _store(ctx)
    path, config = store.save_loadbalancer(
        name,
        policy=policy,
        members=list(members),
        settings=_parse_set(settings),
        directory=directory,
    )
    _warn(config.warnings)
    click.echo(f"saved {name} ({config.policy.value}: {', '.join(config.member_names)}) to {path}")


@profiles.command("push")
@click.argument("name")
@click.argument("member")
@click.pass_context
def profiles_push(ctx: click.Context, name: str, member: str) -> None:
    """Append MEMBER to load balancer NAME."""
    path, config = _store(ctx).push(name, member)
    _warn(config.warnings)
    click.echo(f"{name}: {', '.join(config.member_names)} ({path})")


@profiles.command("pop")
@click.argument("name")
@click.pass_context
def profiles_pop(ctx: click.Context, name: str) -> None:
    """Remove the last member of load balancer NAME."""
    path, removed, config = _store(ctx).pop(name)
    _warn(config.warnings)
    click.echo(f"removed {removed}; {name}: {', '.join(config.member_names)} ({path})")


@cli.command("chat")
@click.option("-p", "--profile", "profile", required=True, help="load-balancer profile name")
@click.argument("prompt", required=False)
@click.option("-s", "--system", help="a system prompt")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="print one JSON object {text, backend, model, failover, attempts, usage}",
)
@click.option("-v", "--verbose", is_flag=True, help="log attempts, failovers and breakers")
def chat_command(
    profile: str, prompt: str | None, system: str | None, as_json: bool, verbose: bool
) -> None:
    """Send PROMPT (or stdin) through load balancer PROFILE and stream the answer."""
    import asyncio

    from lbprovider.provider import LoadBalancingProvider

    text = prompt if prompt is not None else _read_stdin()
    if not text.strip():
        raise ConfigError(
            "empty prompt",
            field="PROMPT",
            hint="pass the prompt as an argument or on standard input",
        )
    provider = LoadBalancingProvider.from_profile(profile)
    _warn(provider.config.warnings)
    if verbose:
        _log_to_stderr()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]

    async def run() -> None:
        if as_json:
            result = await provider.complete(messages)
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
            return
        async for chunk in provider.stream(messages):
            if chunk.text:
                click.echo(chunk.text, nl=False)
                sys.stdout.flush()
        click.echo()

    asyncio.run(run())


@cli.command("stats")
@click.argument("name", required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="print the report as JSON (a list without NAME)"
)
@click.option("--reset", is_flag=True, help="clear counters (breakers stay)")
@click.pass_context
def stats_command(ctx: click.Context, name: str | None, as_json: bool, reset: bool) -> None:
    """Show what each member of NAME (default: every profile with recorded state) did."""
    from lbprovider import ledger as ledger_mod
    from lbprovider.clock import SystemClock
    from lbprovider.state import default_store

    profiles = _store(ctx)
    state = default_store()
    ledger = ledger_mod.Ledger(state)
    # A report needs the members' names, not their keys (SPEC §2.2): read lightly.
    if name is not None:
        configs = [profiles.outline(name)]
    else:
        configs = []
        for recorded in ledger_mod.recorded_profiles(ledger):
            try:
                configs.append(profiles.outline(recorded))
            except ConfigError as exc:
                _warn([f"recorded state for {recorded!r} skipped: {exc}"])
    if reset:
        for config in configs:
            ledger_mod.reset_counters(ledger, config.name)
            click.echo(f"reset counters of {config.name}", err=True)
    now = SystemClock().now()
    reports = [ledger_mod.report(c, ledger, now) for c in configs]
    _require_store(
        state,
        "cannot be read, so there is nothing to report",
        "move a broken file aside (a new one is made), start the Redis server, or point "
        "LBPROVIDER_STATE elsewhere",
    )
    if as_json:
        click.echo(json.dumps(reports[0] if name is not None else reports, indent=2))
        return
    if not reports:
        click.echo("no recorded state yet (run a request first)", err=True)
        return
    from lbprovider.report import console_for_tables, render_stats

    console = console_for_tables()
    for report in reports:
        render_stats(report, console)


@cli.command("top")
@click.argument("name", required=False)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    metavar="S",
    help="seconds between redraws",
)
@click.option("--once", is_flag=True, help="print one frame and exit")
@click.pass_context
def top_command(ctx: click.Context, name: str | None, interval: float, once: bool) -> None:
    """A live view of NAME (default: every load balancer with recorded state), from the
    state store, so of every process sharing it. Ctrl-C quits."""
    from lbprovider import ledger as ledger_mod
    from lbprovider.clock import SystemClock
    from lbprovider.config import Outline
    from lbprovider.state import default_store

    profiles = _store(ctx)
    state = default_store()
    ledger = ledger_mod.Ledger(state)
    # `top` may watch from a machine that holds none of the keys: outlines, not configs.
    configs: dict[str, Outline] = {}
    skipped: set[str] = set()
    if name is not None:
        configs[name] = profiles.outline(name)

    def load(now: float) -> list[dict[str, Any]]:
        # Without NAME, a load balancer that records its first request later joins the view.
        names = [name] if name is not None else ledger_mod.recorded_profiles(ledger)
        for recorded in names:
            if recorded in configs or recorded in skipped:
                continue
            try:
                configs[recorded] = profiles.outline(recorded)
            except ConfigError as exc:
                skipped.add(recorded)
                _warn([f"recorded state for {recorded!r} skipped: {exc}"])
        return [ledger_mod.report(configs[n], ledger, now) for n in names if n in configs]

    from lbprovider import top
    from lbprovider.report import console_for_tables

    console = console_for_tables(pipe_width=None)
    clock = SystemClock()
    if once:
        now = clock.now()
        reports = load(now)
        _require_store(
            state,
            "cannot be read, so there is nothing to show",
            "start the Redis server, fix the state file, or point LBPROVIDER_STATE elsewhere",
        )
        if not reports:
            click.echo("no recorded state yet (run a request first)", err=True)
            return
        console.print(top.render_frame(reports, now=now))
        return

    def notice() -> str | None:
        if getattr(state, "degraded", False):
            return "the state store cannot be reached (reconnecting): figures may be stale"
        return None

    top.run(load, console=console, interval_s=interval, clock=clock.now, notice=notice)


def _require_store(state: Any, problem: str, hint: str) -> None:
    """A request may go on without its state store; a report of the store, or a change by
    hand that every process must see, cannot."""
    from lbprovider.redaction import redact_url
    from lbprovider.state import state_url

    if getattr(state, "degraded", False):
        raise ConfigError(
            f"the state store {redact_url(state_url())} {problem}",
            field="LBPROVIDER_STATE",
            hint=hint,
        )


_UNWRITTEN = (
    "cannot be written: nothing was changed",
    "start the Redis server or fix the state file, then run this again",
)


def _read_stdin() -> str:
    """Standard input as text; bytes that are not UTF-8 are the caller's error (exit 2)."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"standard input is not UTF-8 text (byte {exc.start})",
            field="PROMPT",
            hint="send UTF-8 text; check the file's or the terminal's encoding",
        ) from None


def _log_to_stderr() -> None:
    """``-v``: lbprovider's own log lines, on stderr only (never stdout, never twice)."""
    import logging

    class Stderr(logging.StreamHandler):  # type: ignore[type-arg]
        """Writes to whatever ``sys.stderr`` is at the time (click's runner swaps it)."""

        @property
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, value: Any) -> None:
            pass

    logger = logging.getLogger("lbprovider")
    if not any(type(h).__name__ == "Stderr" for h in logger.handlers):
        handler = Stderr()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


MAX_BENCH_S = 366 * 86400
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1h30m``."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise ConfigError(
            f"cannot read duration {text!r}",
            field="--for",
            hint="write it like 90, 90s, 5m or 1h30m",
        )
    h, m, sec = (float(g) if g else 0.0 for g in match.groups())
    seconds = h * 3600 + m * 60 + sec
    if seconds <= 0:
        raise ConfigError("the duration must be positive", field="--for")
    if seconds > MAX_BENCH_S:
        raise ConfigError(
            f"cannot read duration {text!r}: longer than {MAX_BENCH_S // 86400} days",
            field="--for",
            hint="bench for at most a year; unbench by hand sooner",
        )
    return seconds


def _member_profile(ctx: click.Context, member: str) -> str:
    from lbprovider.profiles.models import LoadBalancerProfile

    path, profile = _store(ctx).load(member)
    if isinstance(profile, LoadBalancerProfile):
        raise ConfigError(
            f"{member!r} is a load balancer; bench one of its members", file=path, field="MEMBER"
        )
    return member


@cli.command("bench")
@click.argument("member")
@click.option(
    "--for", "duration", required=True, metavar="DURATION", help="how long, e.g. 90s, 5m, 1h"
)
@click.pass_context
def bench_command(ctx: click.Context, member: str, duration: str) -> None:
    """Take MEMBER out of rotation (every load balancer) for DURATION."""
    import datetime as dt

    from lbprovider import ledger
    from lbprovider.state import default_store

    seconds = parse_duration(duration)
    _member_profile(ctx, member)
    now = dt.datetime.now().astimezone()
    store = default_store()
    ledger.bench(ledger.Ledger(store), member, seconds, now.timestamp())
    _require_store(store, *_UNWRITTEN)
    until = (now + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S %Z")
    click.echo(f"benched {member} until {until}")


@cli.command("unbench")
@click.argument("member")
@click.pass_context
def unbench_command(ctx: click.Context, member: str) -> None:
    """Put MEMBER back into rotation (closes its breaker)."""
    from lbprovider import ledger
    from lbprovider.state import default_store

    _member_profile(ctx, member)
    store = default_store()
    ledger.unbench(ledger.Ledger(store), member)
    _require_store(store, *_UNWRITTEN)
    click.echo(f"unbenched {member}")


@cli.command("demo")
@click.option("--json", "as_json", is_flag=True, help="print the stats of each profile as JSON")
@click.option(
    "--requests",
    "requests",
    type=click.IntRange(1, 200),
    default=12,
    show_default=True,
    help="requests per policy",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep the demo's profiles and state here (default: a temp dir, removed)",
)
def demo_command(as_json: bool, requests: int, state_dir: Path | None) -> None:
    """Run the whole system on three simulated backends on loopback (no keys, no network)."""
    from lbprovider.demo import run_demo

    run_demo(requests=requests, as_json=as_json, state_dir=state_dir)


@cli.command("sim")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="port on 127.0.0.1 (0 picks a free one)",
)
@click.option(
    "--behavior",
    "behavior",
    default="ok",
    show_default=True,
    help="e.g. ok, status=503, status=429,retry_after=2, stall_first_chunk=10, "
    "drop_after=3, flaky=0.5,seed=1, fail_first=2, malformed, cache_ttl=300, "
    "rpm_limit=20,tpm_limit=40000 (see docs/cli.md)",
)
@click.option(
    "--for",
    "duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="stop after this many seconds (default: until Ctrl-C)",
)
@click.option(
    "--api",
    type=click.Choice(["openai", "anthropic"]),
    default="openai",
    show_default=True,
    help="the API you will point at it (it answers /v1/chat/completions and /v1/messages "
    "either way)",
)
def sim_command(port: int, behavior: str, duration: float | None, api: str) -> None:
    """Run a simulated OpenAI-compatible and Anthropic backend on 127.0.0.1."""
    from lbprovider import sim

    try:
        parsed = sim.Behavior.parse(behavior)
    except ValueError as exc:
        raise ConfigError(str(exc), field="--behavior", hint="see lbprovider sim --help") from None
    try:
        sim.run_forever(parsed, port=port, duration=duration, api=api)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
            field="--port",
            hint="pick another port, or 0 for a free one",
        ) from None


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=4000,
    show_default=True,
    help="port (0 picks a free one)",
)
@click.option(
    "--profile",
    "profiles",
    multiple=True,
    metavar="NAME",
    help="serve this load balancer (repeatable; default: every one in the store)",
)
@click.option(
    "--alias",
    "aliases",
    multiple=True,
    metavar="PATTERN=NAME",
    help="client model names matching the glob go to NAME, e.g. 'claude-*=coding' (repeatable)",
)
@click.option("--default", "default", metavar="NAME", help="serve every other model name with NAME")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="file holding the gateway key(s) (default: $LBPROVIDER_SERVE_KEY or <home>/serve.key)",
)
@click.option(
    "--allow-origin",
    "allow_origins",
    multiple=True,
    metavar="ORIGIN",
    help="let a web page from this origin call the gateway (repeatable)",
)
@click.option(
    "--max-body-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=32.0,
    show_default=True,
    help="refuse larger request bodies (413)",
)
@click.option(
    "--drain-s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="on SIGTERM, let requests in flight finish for this long",
)
def serve_command(
    host: str,
    port: int,
    profiles: tuple[str, ...],
    aliases: tuple[str, ...],
    default: str | None,
    key_file: Path | None,
    allow_origins: tuple[str, ...],
    max_body_mb: float,
    drain_s: float,
) -> None:
    """Serve the load balancers over the OpenAI and Anthropic APIs (the gateway)."""
    from lbprovider.gateway.served import parse_alias
    from lbprovider.gateway.server import ServeOptions, run
    from lbprovider.profiles.files import check_name

    for name in (*profiles, *([default] if default else [])):
        check_name(name, field="--profile" if name in profiles else "--default")
    options = ServeOptions(
        host=host,
        port=port,
        profiles=profiles,
        aliases=[parse_alias(a) for a in aliases],
        default=default,
        key_file=key_file,
        allow_origins=allow_origins,
        max_body_mb=max_body_mb,
        drain_s=drain_s,
    )
    try:
        run(options)
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                field="--port",
                hint="pick another port, or 0 for a free one",
            ) from None
        raise


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="lbprovider")
    finally:
        # Output still buffered for a reader that has gone (`| head`) is not an error.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
