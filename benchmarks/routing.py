"""Routing no gateway has (issue 20): lbprovider without and with each [v3] routing rule,
in one run, and litellm Router's nearest configuration where it has one.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/routing.py [--quick] [--tiny] [--docs]

Four scenarios, each over three simulated backends (``lbprovider.sim.SimServer`` in this
process, on 127.0.0.1 ephemeral ports), round-robin, ``memory://`` state:

- **conversations**: 30 conversations x 6 turns; one shared 6000-token system prompt and
  distinct first user messages (as coding assistants send); each turn resends the whole
  history plus the previous answer; three caching sims (``cache_ttl=300``).  Cached share
  of prompt tokens (the sims' own counters), against what one warm member that saw every
  request would have cached (the same requests replayed, in order, to a fourth sim), and
  the spread (max / min requests per member).  Without / with ``affinity_ttl_ms``, and
  litellm Router with its ``prompt_caching`` pre-call check.
- **rate limit**: member m0 is limited to 20 RPM (``rpm_limit=20``); round-robin offers
  each member 40 RPM (120 RPM in all) for two minutes.  429s the limited member sent
  (its ``limited`` counter), success, p99.  Without / with ``headroom_enabled``.
- **stall**: m0 is silent 30 s before its first content chunk; ``timeout_ms`` 2000.
  TTFC p99 and extra backend hits, without / with ``hedge_after_ms`` 300, beside the same
  load on three healthy members (the healthy p99 of the target).
- **recovery**: every member answers 503 for three minutes (breakers on, recovery from 1 s
  doubling up to 30 s), then all come back: seconds from their return to the first served
  request, without / with ``panic_probe_enabled``.

The rate-limit and recovery scenarios run on a compressed clock (:class:`ScaledClock`):
the sims' rate window and the engine's breakers, headroom and sleeps all read the same
time source, which runs ``scale`` times faster than real time, so their minutes pass in
seconds.  Latencies are real milliseconds.

A rule that is not on main yet (its setting missing from ``LBSettings.model_fields``) has
its "with" run skipped and said so.  Writes ``benchmarks/results/routing.json`` (``--tiny``
writes nothing); ``--docs`` also rewrites the Routing section of docs/benchmarks.md
(``--report-only``: from the last results, without running).  Nothing here is a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import KEY, bench_config
from compare import ROUTING_MARK

import lbprovider
from lbprovider.clock import Clock, Timer
from lbprovider.provider import LoadBalancingProvider
from lbprovider.settings import LBSettings
from lbprovider.sim import Behavior, SimServer
from lbprovider.state.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
NOTES = ROOT / "benchmarks" / "routing-notes.md"
FULL_COMMAND = "PYTHONPATH=$PWD .venv/bin/python benchmarks/routing.py --docs"

# Each rule: its setting, the value that turns it off, the value measured "with".
HEDGE_AFTER_MS = 300
FEATURES: dict[str, tuple[str, Any, Any]] = {
    "affinity": ("affinity_ttl_ms", 0, 300_000),
    "headroom": ("headroom_enabled", False, True),
    "hedging": ("hedge_after_ms", 0, HEDGE_AFTER_MS),
    "panic probes": ("panic_probe_enabled", False, True),
}
HEDGE_BUDGET_PERCENT = 10

# conversations: a 6000-token shared system prompt (4 characters a token, the sim's
# estimate), 1500-token user turns (a task, then tool results and files), 500-token answers.
SYSTEM_TOKENS, USER_TOKENS, ANSWER_TOKENS = 6000, 1500, 500
CONVERSATION_CONCURRENCY = 8
# rate limit
RPM_LIMIT, OFFERED_RPM_PER_MEMBER = 20, 40
# stall
STALL_TIMEOUT_MS = 2000
STALL_CONCURRENCY = 4
HEALTHY = "chunks=10,chunk_delay=0.01"
# recovery
RECOVERY_MS, MAX_RECOVERY_MS = 1000, 30_000


@dataclass(frozen=True)
class Sizes:
    """How much each scenario sends."""

    conversations: int
    turns: int
    rate_seconds: float  # compressed seconds of offered load
    rate_scale: float
    stall_requests: int
    down_seconds: float  # compressed seconds of the full outage
    recovery_scale: float


FULL = Sizes(30, 6, 120.0, 4.0, 60, 180.0, 10.0)
QUICK = Sizes(15, 6, 120.0, 8.0, 30, 180.0, 20.0)
TINY = Sizes(3, 3, 20.0, 20.0, 6, 20.0, 20.0)


# -- time -------------------------------------------------------------------------------------


class ScaledClock:
    """The engine's :class:`~lbprovider.clock.Clock` and the sims' clock, ``scale``
    times faster than real time (timers stay real: no scenario on it has a timeout)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self._epoch = time.time()
        self._origin = time.monotonic()

    def elapsed(self) -> float:
        """Compressed seconds since the clock was made."""
        return (time.monotonic() - self._origin) * self.scale

    def now(self) -> float:
        """Compressed epoch seconds."""
        return self._epoch + self.elapsed()

    def monotonic(self) -> float:
        """Compressed seconds from the clock's origin."""
        return self.elapsed()

    def ticks(self) -> float:
        """The event loop's (real) time."""
        return asyncio.get_running_loop().time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """A real-time timer."""
        handle: Timer = asyncio.get_running_loop().call_later(delay, callback)
        return handle

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of compressed time."""
        await asyncio.sleep(seconds / self.scale)

    async def sleep_until(self, elapsed: float) -> None:
        """Sleep until :meth:`elapsed` reaches ``elapsed``."""
        await asyncio.sleep(max(0.0, (elapsed - self.elapsed()) / self.scale))


# -- variants ---------------------------------------------------------------------------------


# The settings landed on main before the rules: a setting counts as implemented once a
# module of the engine reads it.  selection.py's read of hedge_after_ms only counts the
# hedge budget's requests, so for hedging it does not count.
NOT_THE_RULE = {"hedging": {"settings.py", "selection.py"}}


def available(feature: str) -> bool:
    """Whether the engine on this branch has the rule: its setting, read by the engine."""
    key = FEATURES[feature][0]
    if key not in LBSettings.model_fields:
        return False
    package = Path(lbprovider.__file__).parent
    return any(
        f".{key}" in path.read_text()
        for path in package.rglob("*.py")
        if path.name not in NOT_THE_RULE.get(feature, {"settings.py"})
    )


def variants(feature: str) -> list[tuple[str, dict[str, Any] | None]]:
    """("without", settings) and ("with", settings or None when the rule is not there yet).

    The two runs differ only in the rule's own setting."""
    key, off, on = FEATURES[feature]
    if not available(feature):
        return [("without", {}), ("with", None)]
    return [("without", {key: off}), ("with", {key: on})]


def lb_for(
    urls: Sequence[str], settings: dict[str, Any], clock: Clock | None = None, **kwargs: Any
) -> LoadBalancingProvider:
    """A round-robin load balancer over the urls, ``memory://`` state."""
    config = bench_config(urls, **settings)
    sleep = clock.sleep if isinstance(clock, ScaledClock) else None
    return LoadBalancingProvider(config, store=MemoryStore(), clock=clock, sleep=sleep, **kwargs)


async def drain(lb: LoadBalancingProvider, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One streamed request: its text, usage, serving member, time to first content."""
    start = time.perf_counter()
    first = None
    text: list[str] = []
    usage = None
    backend = None
    async for chunk in lb.stream(messages):
        if chunk.is_content and first is None:
            first = time.perf_counter() - start
        text.append(chunk.text)
        usage = chunk.usage or usage
        backend = chunk.backend or backend
    return {
        "text": "".join(text),
        "prompt": usage.prompt_tokens if usage else 0,
        "cached": usage.cache_read_tokens if usage else 0,
        "backend": backend,
        "ttfc": first,
        "latency": time.perf_counter() - start,
    }


def pct(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (inclusive), or None without data."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[round(p) - 1]


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds (None stays None)."""
    return None if seconds is None else seconds * 1000


def counters(stats: dict[str, Any]) -> dict[str, Any]:
    """The [v3] counters of ``provider.stats()``: the load balancer's and per member."""
    top = ("affinityHits", "affinityMisses", "hedges", "hedgeWins", "panicProbes")
    member = ("cacheReadTokens", "cacheWriteTokens", "headroomSkips", "hedgesLost", "timeouts")
    return {
        **{k: stats.get(k) for k in top},
        "members": {
            name: {k: m.get(k) for k in member if k in m}
            for name, m in stats.get("backendMetrics", {}).items()
        },
    }


# -- conversations ----------------------------------------------------------------------------


def filler(tokens: int, tag: str) -> str:
    """Text of about ``tokens`` tokens (4 characters each), distinct per ``tag``."""
    unit = f"[{tag}] lorem ipsum dolor sit amet, consectetur adipiscing elit. "
    return (unit * (tokens * 4 // len(unit) + 1))[: tokens * 4]


SYSTEM_PROMPT = filler(SYSTEM_TOKENS, "You are a coding assistant; follow the repository's rules")
ANSWER = filler(ANSWER_TOKENS, "assistant")


def cache_behavior() -> Behavior:
    """A caching member: a prefix seen in the last 5 minutes is read from the cache."""
    return Behavior(cache_ttl=300, chunks=20, text=ANSWER, first_chunk_delay=0.05)


@contextlib.asynccontextmanager
async def three_sims(
    *behaviors: Behavior | str, clock: Callable[[], float] = time.time
) -> AsyncIterator[list[SimServer]]:
    """Three running sims (one per behaviour), closed on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(SimServer(b, clock=clock)) for b in behaviors]


Send = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


def marked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as Claude Code sends them: ``cache_control`` breakpoints on the system
    prompt and on the newest message (moved each turn).  litellm's prompt-caching check
    pins only prompts that carry one; the sims' cache ignores them, as providers do for
    the prefix they hash."""

    def block(message: dict[str, Any]) -> dict[str, Any]:
        part = {"type": "text", "text": message["content"], "cache_control": {"type": "ephemeral"}}
        return {**message, "content": [part]}

    return [block(messages[0]), *messages[1:-1], block(messages[-1])]


async def converse(sizes: Sizes, send: Send) -> tuple[list[list[dict[str, Any]]], list[dict]]:
    """Every conversation, its turns one after another, up to 8 turns in flight at once
    (interleaved, as many users are); the requests in the order they were sent, and
    per request (prompt, cached, previous prompt)."""
    gate = asyncio.Semaphore(CONVERSATION_CONCURRENCY)
    sent: list[list[dict[str, Any]]] = []
    turns: list[dict[str, Any]] = []

    async def conversation(i: int) -> None:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": filler(USER_TOKENS, f"conversation {i}, task")},
        ]
        previous = 0
        for t in range(sizes.turns):
            async with gate:
                request = marked(messages)
                sent.append(request)
                answer = await send(request)
            turns.append(
                {"turn": t, **{k: answer[k] for k in ("prompt", "cached")}, "prev": previous}
            )
            previous = answer["prompt"]
            messages = [
                *messages,
                {"role": "assistant", "content": answer["text"]},
                {"role": "user", "content": filler(USER_TOKENS, f"conversation {i}, turn {t + 1}")},
            ]

    await asyncio.gather(*(conversation(i) for i in range(sizes.conversations)))
    return sent, turns


def share(sims: Sequence[SimServer]) -> float:
    """Cached ÷ prompt tokens over the sims' answers."""
    prompt = sum(s.prompt_tokens for s in sims)
    return sum(s.cached_tokens for s in sims) / prompt if prompt else 0.0


def conversation_figures(
    system: str, sims: Sequence[SimServer], turns: list[dict[str, Any]], stats: dict | None
) -> dict[str, Any]:
    """What the report shows for one system's conversations."""
    hits = [s.hits for s in sims]
    later = [t for t in turns if t["turn"] > 0]
    warm = sum(1 for t in later if t["prev"] and t["cached"] >= t["prev"])
    # The conversation's own tokens: every member caches the shared system prompt soon.
    own = sum(t["prompt"] - SYSTEM_TOKENS for t in turns)
    own_cached = sum(max(t["cached"] - SYSTEM_TOKENS, 0) for t in turns)
    return {
        "system": system,
        "requests": len(turns),
        "cached_share": share(sims),
        "per_member": hits,
        "spread": max(hits) / min(hits) if min(hits) else None,
        "warm_later_turns": warm / len(later) if later else None,
        "own_share": own_cached / own if own > 0 else None,
        "counters": counters(stats) if stats else None,
    }


async def replay_ideal(sent: list[list[dict[str, Any]]]) -> float:
    """The cached share one warm member would have had: every request, in the order
    they were sent, to one fresh caching sim."""
    import aiohttp

    async with SimServer(cache_behavior()) as ideal, aiohttp.ClientSession() as session:
        for messages in sent:
            body = {"model": "bench", "messages": messages}
            headers = {"Authorization": f"Bearer {KEY}"}
            async with session.post(
                f"{ideal.url}/chat/completions", json=body, headers=headers
            ) as r:
                await r.read()
        return share([ideal])


async def conversations_lb(sizes: Sizes, settings: dict[str, Any]) -> tuple[dict, list]:
    """lbprovider over three caching sims."""
    async with three_sims(cache_behavior(), cache_behavior(), cache_behavior()) as sims:
        lb = lb_for([s.url for s in sims], settings)
        sent, turns = await converse(sizes, lambda m: drain(lb, m))
        return conversation_figures("", sims, turns, lb.stats()), sent


def litellm_router(urls: Sequence[str], **kwargs: Any) -> Any:
    """litellm.Router over the urls, simple-shuffle (its round-robin), offline cost map."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    model_list = [
        {
            "model_name": "bench",
            "litellm_params": {"model": "openai/bench", "api_base": u, "api_key": KEY},
        }
        for u in urls
    ]
    return Router(model_list=model_list, routing_strategy="simple-shuffle", **kwargs)


async def conversations_router(sizes: Sizes) -> dict[str, Any]:
    """litellm Router with its prompt-caching pre-call check (``prompt_caching``)."""
    async with three_sims(cache_behavior(), cache_behavior(), cache_behavior()) as sims:
        router = litellm_router([s.url for s in sims], optional_pre_call_checks=["prompt_caching"])

        async def send(messages: list[dict[str, Any]]) -> dict[str, Any]:
            response = await router.acompletion(
                model="bench",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, prompt, cached = [], 0, 0
            async for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
                usage = getattr(chunk, "usage", None)
                if usage:
                    prompt = usage.prompt_tokens
                    details = getattr(usage, "prompt_tokens_details", None)
                    cached = getattr(details, "cached_tokens", 0) or 0
            return {"text": "".join(text), "prompt": prompt, "cached": cached}

        _, turns = await converse(sizes, send)
        # Its success callbacks (which record the pins) run as tasks: let them end.
        await asyncio.sleep(0.2)
        return conversation_figures("litellm Router (prompt_caching)", sims, turns, None)


async def scenario_conversations(sizes: Sizes) -> dict[str, Any]:
    """Cached share without / with affinity, the ideal, litellm Router's."""
    runs, sent = [], None
    for name, settings in variants("affinity"):
        if settings is None:
            runs.append({"system": f"lbprovider {name} affinity", "skipped": True})
            continue
        figures, requests = await conversations_lb(sizes, settings)
        figures["system"] = f"lbprovider {name} affinity"
        runs.append(figures)
        sent = sent or requests
    assert sent is not None
    ideal = await replay_ideal(sent)
    runs.append(await conversations_router(sizes))
    return {"ideal_share": ideal, "runs": runs}


# -- rate limit -------------------------------------------------------------------------------


async def rate_limit_run(sizes: Sizes, settings: dict[str, Any]) -> dict[str, Any]:
    """Open-loop arrivals at 3 x 40 RPM on the compressed clock; m0 limited to 20 RPM."""
    clock = ScaledClock(sizes.rate_scale)
    limited = Behavior.parse(f"{HEALTHY},rpm_limit={RPM_LIMIT}")
    async with three_sims(limited, HEALTHY, HEALTHY, clock=clock.now) as sims:
        lb = lb_for(
            [s.url for s in sims],
            {
                "circuit_breaker_enabled": True,
                "circuit_breaker_failure_threshold": 3,
                "circuit_breaker_recovery_timeout_ms": 30_000,
                "failover_retry_count": 2,
                **settings,
            },
            clock,
        )
        interval = 60.0 / (OFFERED_RPM_PER_MEMBER * len(sims))
        count = int(sizes.rate_seconds / interval)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        messages = [{"role": "user", "content": "Write a short answer."}]

        async def one(i: int) -> None:
            await clock.sleep_until(i * interval)
            try:
                answer = await drain(lb, messages)
            except Exception as exc:  # a failed request is a result
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(answer["latency"])

        await asyncio.gather(*(one(i) for i in range(count)))
        return {
            "requests": count,
            "success_rate": len(latencies) / count,
            "errors": errors,
            "limited_429s": sims[0].limited,
            "per_member": [s.hits for s in sims],
            "p50_ms": ms(pct(latencies, 50)),
            "p99_ms": ms(pct(latencies, 99)),
            "counters": counters(lb.stats()),
        }


async def scenario_rate_limit(sizes: Sizes) -> dict[str, Any]:
    """429s reaching the limited member, success, p99: without / with headroom."""
    runs = []
    for name, settings in variants("headroom"):
        system = f"lbprovider {name} headroom"
        if settings is None:
            runs.append({"system": system, "skipped": True})
            continue
        runs.append({"system": system, **await rate_limit_run(sizes, settings)})
    return {"runs": runs}


# -- stall ------------------------------------------------------------------------------------


async def stall_run(sizes: Sizes, settings: dict[str, Any], stalled: bool) -> dict[str, Any]:
    """``stall_requests`` streamed requests, 4 at a time; m0 stalls when ``stalled``."""
    first = f"stall_first_chunk=30,{HEALTHY}" if stalled else HEALTHY
    async with three_sims(first, HEALTHY, HEALTHY) as sims:
        lb = lb_for(
            [s.url for s in sims],
            {
                "timeout_ms": STALL_TIMEOUT_MS,
                "circuit_breaker_enabled": True,
                "circuit_breaker_failure_threshold": 3,
                "circuit_breaker_recovery_timeout_ms": 30_000,
                "failover_retry_count": 2,
                **settings,
            },
        )
        gate = asyncio.Semaphore(STALL_CONCURRENCY)
        ttfcs: list[float] = []
        errors: dict[str, int] = {}
        messages = [{"role": "user", "content": "Write a short answer."}]

        async def one() -> None:
            async with gate:
                try:
                    answer = await drain(lb, messages)
                except Exception as exc:  # a failed request is a result
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                if answer["ttfc"] is not None:
                    ttfcs.append(answer["ttfc"])

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(sizes.stall_requests)))
        wall = time.perf_counter() - start
        hits = sum(s.hits for s in sims)
        return {
            "requests": sizes.stall_requests,
            "success_rate": len(ttfcs) / sizes.stall_requests,
            "errors": errors,
            "ttfc_p50_ms": ms(pct(ttfcs, 50)),
            "ttfc_p95_ms": ms(pct(ttfcs, 95)),
            "ttfc_p99_ms": ms(pct(ttfcs, 99)),
            "backend_hits": hits,
            "extra_hits": hits - sizes.stall_requests,
            "wall_s": wall,
            "counters": counters(lb.stats()),
        }


def hedge_budget(requests: int) -> int:
    """Hedges §4.3 allows over ``requests`` started within one minute."""
    return int(1 + HEDGE_BUDGET_PERCENT / 100 * requests)


async def scenario_stall(sizes: Sizes) -> dict[str, Any]:
    """TTFC p99 and extra hits: healthy reference, without / with hedging."""
    off = variants("hedging")[0][1] or {}
    runs = [{"system": "lbprovider, 3 healthy members", **await stall_run(sizes, off, False)}]
    for name, settings in variants("hedging"):
        system = f"lbprovider {name} hedging"
        if settings is None:
            runs.append({"system": system, "skipped": True})
            continue
        runs.append({"system": system, **await stall_run(sizes, settings, True)})
    return {"runs": runs, "budget": hedge_budget(sizes.stall_requests)}


# -- recovery ---------------------------------------------------------------------------------


async def recovery_run(sizes: Sizes, settings: dict[str, Any]) -> dict[str, Any]:
    """A full outage on the compressed clock, a request each second, then the return."""
    clock = ScaledClock(sizes.recovery_scale)
    down = Behavior(status=503)
    async with three_sims(down, down, down, clock=clock.now) as sims:
        lb = lb_for(
            [s.url for s in sims],
            {
                "circuit_breaker_enabled": True,
                "circuit_breaker_failure_threshold": 2,
                "circuit_breaker_recovery_timeout_ms": RECOVERY_MS,
                "circuit_breaker_max_recovery_timeout_ms": MAX_RECOVERY_MS,
                "failover_retry_count": 3,
                **settings,
            },
            clock,
        )
        messages = [{"role": "user", "content": "Write a short answer."}]

        async def attempt() -> bool:
            try:
                await drain(lb, messages)
            except Exception:  # during the outage every request fails
                return False
            return True

        tick = 0
        while clock.elapsed() < sizes.down_seconds:
            await attempt()
            tick += 1
            await clock.sleep_until(tick * 1.0)
        for s in sims:
            s.behavior = Behavior.parse("chunks=2")
        back = clock.elapsed()
        breakers = lb.stats()["circuitBreakerStates"]
        waits = [  # recoveryAt is epoch milliseconds
            st["recoveryAt"] / 1000 - clock.now()
            for st in breakers.values()
            if st.get("recoveryAt")
        ]
        served_after, tries = None, 0
        # Bounded: one request every quarter second for twice the longest recovery.
        while clock.elapsed() - back < 2 * MAX_RECOVERY_MS / 1000:
            tries += 1
            sent_at = clock.elapsed() - back
            if await attempt():
                served_after = sent_at
                break
            await clock.sleep_until(back + tries * 0.25)
        return {
            "down_s": sizes.down_seconds,
            "requests_during_outage": tick,
            "first_served_after_s": served_after,
            "requests_until_served": tries,
            "recovery_left_at_return_s": max(waits) if waits else None,
            "first_recovery_at_return_s": min(waits) if waits else None,
            "counters": counters(lb.stats()),
        }


async def scenario_recovery(sizes: Sizes) -> dict[str, Any]:
    """Seconds from the backends' return to the first served request."""
    runs = []
    for name, settings in variants("panic probes"):
        system = f"lbprovider {name} panic probes"
        if settings is None:
            runs.append({"system": system, "skipped": True})
            continue
        runs.append({"system": system, **await recovery_run(sizes, settings)})
    return {"runs": runs}


# -- report -----------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _run(section: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    run = next((r for r in section["runs"] if r["system"].startswith(prefix)), None)
    return None if run is None or run.get("skipped") else run


Target = tuple[str, float | None, str, bool | None]


def targets(results: dict[str, Any]) -> list[Target]:
    """The issue's targets as measured (None: the rule is not on this branch yet)."""
    out: list[Target] = []
    conv = results["conversations"]
    without, with_ = _run(conv, "lbprovider without"), _run(conv, "lbprovider with ")
    ideal = conv["ideal_share"]
    if with_ and without:
        ratio = with_["cached_share"] / ideal
        out.append(
            ("conversations: cached share with affinity ÷ ideal", ratio, "≥ 0.85", ratio >= 0.85)
        )
        ratio = with_["cached_share"] / without["cached_share"]
        out.append(
            ("conversations: cached share with ÷ without affinity", ratio, "≥ 2×", ratio >= 2)
        )
        spread = with_["spread"]
        out.append(
            (
                "conversations: spread max ÷ min with affinity",
                spread,
                "≤ 1.5",
                spread is not None and spread <= 1.5,
            )
        )
    else:
        out.append(
            (
                "conversations: affinity targets",
                None,
                "≥ 0.85 ideal, ≥ 2× without, spread ≤ 1.5",
                None,
            )
        )
    rate = results["rate_limit"]
    without, with_ = _run(rate, "lbprovider without"), _run(rate, "lbprovider with ")
    if with_ and without:
        out.append(
            (
                "rate limit: 429s at the limited member with headroom",
                float(with_["limited_429s"]),
                f"0 (vs {without['limited_429s']} without)",
                with_["limited_429s"] == 0,
            )
        )
        out.append(
            (
                "rate limit: success with headroom",
                with_["success_rate"],
                "1",
                with_["success_rate"] == 1,
            )
        )
        ratio = with_["p99_ms"] / without["p99_ms"]
        out.append(("rate limit: p99 with ÷ without headroom", ratio, "≤ 1×", ratio <= 1))
    else:
        out.append(
            ("rate limit: headroom targets", None, "0 429s, 100 % success, p99 not worse", None)
        )
    stall = results["stall"]
    healthy, with_ = _run(stall, "lbprovider, 3 healthy"), _run(stall, "lbprovider with ")
    if with_ and healthy:
        bound = HEDGE_AFTER_MS + 1.5 * healthy["ttfc_p99_ms"]
        ratio = with_["ttfc_p99_ms"] / bound
        out.append(
            (
                "stall: TTFC p99 with hedging ÷ (hedge_after_ms + 1.5 × healthy p99)",
                ratio,
                "≤ 1×",
                ratio <= 1,
            )
        )
        budget = stall["budget"]
        out.append(
            (
                "stall: extra backend hits with hedging",
                float(with_["extra_hits"]),
                f"≤ {budget} (the budget)",
                with_["extra_hits"] <= budget,
            )
        )
    else:
        out.append(
            (
                "stall: hedging targets",
                None,
                "TTFC p99 ≤ hedge_after_ms + 1.5 × healthy; extra hits ≤ budget",
                None,
            )
        )
    rec = results["recovery"]
    without, with_ = _run(rec, "lbprovider without"), _run(rec, "lbprovider with ")
    if with_ and without:
        served = with_["requests_until_served"] == 1
        out.append(
            (
                "recovery: first request after the return served (panic probes)",
                float(with_["requests_until_served"]),
                "1 request",
                served,
            )
        )
    else:
        out.append(
            (
                "recovery: panic-probe target",
                None,
                "the first request after the return is served",
                None,
            )
        )
    return out


def row(*cells: Any) -> str:
    """One markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def head(*names: str) -> list[str]:
    """A markdown table's header and rule."""
    return [row(*names), "|" + "---|" * len(names)]


def skipped(r: dict[str, Any], feature: str, columns: int) -> str:
    """The row of a "with" run that could not run yet."""
    why = f"skipped: `{FEATURES[feature][0]}` not read by the engine on this branch yet"
    return row(r["system"], why, *[""] * (columns - 2))


def per_member(r: dict[str, Any]) -> str:
    """Requests per member, m0 / m1 / m2."""
    return " / ".join(map(str, r["per_member"]))


def table(results: dict[str, Any]) -> list[str]:
    """Markdown tables, one per scenario."""
    conv, rate, stall, rec = (
        results[k] for k in ("conversations", "rate_limit", "stall", "recovery")
    )
    ideal = conv["ideal_share"]
    lines = [
        "### Conversations",
        "",
        f"Ideal (one warm member that saw every request): cached share {ideal:.3f}.",
        "",
        *head(
            "system",
            "requests",
            "cached share",
            "÷ ideal",
            "later turns warm",
            "share beyond the system prompt",
            "requests per member",
            "spread",
            "affinity hits / misses",
        ),
    ]
    for r in conv["runs"]:
        if r.get("skipped"):
            lines.append(skipped(r, "affinity", 9))
            continue
        c = r.get("counters") or {}
        lines.append(
            row(
                r["system"],
                r["requests"],
                f"{r['cached_share']:.3f}",
                f"{r['cached_share'] / ideal:.2f}",
                _f((r["warm_later_turns"] or 0) * 100, 0, " %"),
                _f(r.get("own_share"), 3),
                per_member(r),
                _f(r["spread"], 2),
                f"{c.get('affinityHits', '-')} / {c.get('affinityMisses', '-')}",
            )
        )
    lines += [
        "",
        "### Rate limit",
        "",
        *head(
            "system",
            "requests",
            "success",
            "429s from m0",
            "requests per member",
            "p50 / p99 ms",
            "headroom skips (m0)",
        ),
    ]
    for r in rate["runs"]:
        if r.get("skipped"):
            lines.append(skipped(r, "headroom", 7))
            continue
        m0 = r["counters"]["members"].get("m0") or {}
        lines.append(
            row(
                r["system"],
                r["requests"],
                f"{r['success_rate'] * 100:.1f} %",
                r["limited_429s"],
                per_member(r),
                f"{_f(r['p50_ms'])} / {_f(r['p99_ms'])}",
                m0.get("headroomSkips", "-"),
            )
        )
    requests = stall["runs"][0]["requests"]
    lines += [
        "",
        "### Stall",
        "",
        f"Hedge budget for {requests} requests in a minute: {stall['budget']}.",
        "",
        *head(
            "system",
            "requests",
            "success",
            "TTFC p50 / p95 / p99 ms",
            "backend hits (extra)",
            "hedges / wins",
            "wall s",
        ),
    ]
    for r in stall["runs"]:
        if r.get("skipped"):
            lines.append(skipped(r, "hedging", 7))
            continue
        c = r["counters"]
        lines.append(
            row(
                r["system"],
                r["requests"],
                f"{r['success_rate'] * 100:.1f} %",
                f"{_f(r['ttfc_p50_ms'])} / {_f(r['ttfc_p95_ms'])} / {_f(r['ttfc_p99_ms'])}",
                f"{r['backend_hits']} ({r['extra_hits']})",
                f"{c.get('hedges', '-')} / {c.get('hedgeWins', '-')}",
                f"{r['wall_s']:.1f}",
            )
        )
    lines += [
        "",
        "### Recovery",
        "",
        *head(
            "system",
            "outage s",
            "first served request sent after the return, s",
            "requests until served",
            "breaker recovery left at the return: first / longest, s",
            "panic probes",
        ),
    ]
    for r in rec["runs"]:
        if r.get("skipped"):
            lines.append(skipped(r, "panic probes", 6))
            continue
        lines.append(
            row(
                r["system"],
                f"{r['down_s']:.0f}",
                _f(r["first_served_after_s"], 2),
                r["requests_until_served"],
                f"{_f(r['first_recovery_at_return_s'])} / {_f(r['recovery_left_at_return_s'])}",
                r["counters"].get("panicProbes", "-"),
            )
        )
    return lines


def markdown(results: dict[str, Any]) -> list[str]:
    """The Routing section of docs/benchmarks.md."""
    meta = results["meta"]
    z = meta["sizes"]
    on = ", ".join(k for k, v in meta["available"].items() if v) or "none yet"
    off = ", ".join(k for k, v in meta["available"].items() if not v) or "none"
    checks = '`optional_pre_call_checks=["prompt_caching"]`'
    lines = [
        ROUTING_MARK,
        "",
        "## Routing: affinity, headroom, hedging, panic probes (without vs with)",
        "",
        f"Generated by `{meta['command']}` ({meta['date']}, {meta['machine']}; the 2 cores",
        "are shared with other sessions' test runs, so absolute figures move between runs —",
        "compare the ratios within the run). Three `lbprovider.sim` backends in the measuring",
        "process on 127.0.0.1, one round-robin load balancer, `memory://` state. Each rule is",
        "measured off and on with nothing else changed; a rule the engine on the branch does",
        f'not read yet has its "with" run skipped. Measured: {on}; not yet: {off}.',
        "",
        f"- **conversations**: {z['conversations']} conversations × {z['turns']} turns, "
        f"{CONVERSATION_CONCURRENCY} turns in flight;",
        f"  one shared {SYSTEM_TOKENS}-token system prompt, {USER_TOKENS}-token user turns",
        f"  (a distinct task first), {ANSWER_TOKENS}-token answers; each turn resends the",
        "  history, with Claude Code's `cache_control` breakpoints (system prompt and newest",
        "  message). Sims `cache_ttl=300`: a prefix at a message boundary seen in the last",
        "  5 min (≥ 1024 tokens) is cached. *Cached share* = Σ cached ÷ Σ prompt tokens from",
        "  the sims' counters; *ideal* = the same requests replayed in order to one fresh sim;",
        "  *later turns warm* = turns after the first whose cached tokens cover the previous",
        f"  turn's whole prompt. litellm Router: simple-shuffle with {checks}.",
        f"- **rate limit**: m0 has `rpm_limit={RPM_LIMIT}`; round-robin offers each member",
        f"  {OFFERED_RPM_PER_MEMBER} RPM ({OFFERED_RPM_PER_MEMBER * 3} in all, open loop) for "
        f"{z['rate_seconds']:.0f} s on a clock {z['rate_scale']:g}× real time",
        "  (sims and engine read it); breakers on (3 failures, 30 s), `failover_retry_count` 2.",
        "  Latencies are real ms.",
        f"- **stall**: m0 `stall_first_chunk=30`, `timeout_ms` {STALL_TIMEOUT_MS}, breakers on",
        f"  (3, 30 s); {z['stall_requests']} requests, {STALL_CONCURRENCY} at a time; hedging = "
        f"`hedge_after_ms` {HEDGE_AFTER_MS},",
        f"  `hedge_budget_percent` {HEDGE_BUDGET_PERCENT}. Extra hits = backend hits − requests.",
        f"- **recovery**: all three answer 503 for {z['down_seconds']:.0f} s (a request each "
        "second), then all",
        f"  come back; breakers 2 failures, recovery {RECOVERY_MS} ms doubling to "
        f"{MAX_RECOVERY_MS} ms; clock {z['recovery_scale']:g}× real",
        "  time; after the return a request every 0.25 s until one is served.",
        "",
        *table(results),
        "",
        *head("target", "measured", "wanted", ""),
    ]
    for name, value, wanted, met in targets(results):
        shown = "-" if value is None else f"{value:.2f}" + ("×" if "×" in wanted else "")
        verdict = "not measured yet" if met is None else "met" if met else "missed"
        lines.append(row(name, shown, wanted, verdict))
    if NOTES.exists():
        lines += ["", NOTES.read_text().rstrip()]
    return [*lines, ""]


def write_docs(section: list[str]) -> None:
    """Replace the Routing section at the end of docs/benchmarks.md (or append it)."""
    text = DOCS.read_text()
    if ROUTING_MARK in text:
        text = text[: text.index(ROUTING_MARK)]
    DOCS.write_text(text.rstrip() + "\n\n" + "\n".join(section))


def print_summary(results: dict[str, Any]) -> None:
    """The tables and targets, on stdout."""
    print("\n".join(table(results)))
    print()
    for name, value, wanted, met in targets(results):
        verdict = "not measured yet" if met is None else "met" if met else "MISSED"
        print(f"{name}: {_f(value, 2)} (wanted {wanted}) {verdict}")


async def run_all(sizes: Sizes) -> dict[str, Any]:
    """Every scenario, one after the other."""
    results: dict[str, Any] = {
        "meta": {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} shared cores, Python {platform.python_version()}",
            "sizes": asdict(sizes),
            "available": {f: available(f) for f in FEATURES},
        }
    }
    for key, scenario in (
        ("conversations", scenario_conversations),
        ("rate_limit", scenario_rate_limit),
        ("stall", scenario_stall),
        ("recovery", scenario_recovery),
    ):
        start = time.perf_counter()
        results[key] = await scenario(sizes)
        print(f"{key}: {time.perf_counter() - start:.1f} s", flush=True)
    return results


def main() -> None:
    """Parse the options, run, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="half the conversations, faster clocks")
    size.add_argument("--tiny", action="store_true", help="a smoke run: prints, writes nothing")
    parser.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md's section")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite docs/benchmarks.md's section from benchmarks/results/routing.json",
    )
    args = parser.parse_args()
    out = RESULTS / "routing.json"
    if args.report_only:
        write_docs(markdown(json.loads(out.read_text())))
        print(f"wrote {DOCS}")
        return
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    results = asyncio.run(run_all(sizes))
    results["meta"]["command"] = FULL_COMMAND.replace(
        " --docs", " --quick --docs" if args.quick else " --docs"
    )
    print_summary(results)
    if args.tiny:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if args.docs:
        write_docs(markdown(results))
        print(f"wrote {out} and {DOCS}")
    else:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
