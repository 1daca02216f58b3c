"""SPEC v2 §3.4 over real HTTP, on both transports: the idle timeout, whole answers for
non-streaming callers, continuation for streaming ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lbprovider.errors import (
    NoBackendAvailableError,
    StreamIdleTimeoutError,
    StreamInterruptedError,
)
from lbprovider.sim import serve
from lbprovider.testing import FakeClock
from lbprovider.timeouts import IdleTimeout
from tests.conftest import HI, make_lb

pytestmark = pytest.mark.usefixtures("both_transports")

TEXT = "The quick brown fox jumps over the lazy dog; twice over; for the test."
WHOLE = f"chunks=8,text={TEXT}"
PREFILL = {"continuation": "prefill"}

INTERRUPTIONS = {
    "cut": "drop_after=3",
    "reset": "reset_after=3",
    "stall": "stall_after=3",
    "cut short": "no_finish",
}


async def streamed(lb_: Any) -> tuple[str, BaseException | None]:
    """What a streaming caller received, and the error it ended with."""
    got: list[str] = []
    try:
        async for chunk in lb_.stream(HI):
            got.append(chunk.text)
    except StreamInterruptedError as exc:
        return "".join(got), exc
    return "".join(got), None


# -- non-streaming callers ---------------------------------------------------------------


@pytest.mark.parametrize("cause", list(INTERRUPTIONS))
async def test_complete_fails_over_after_an_interruption(cause: str, both_transports: str) -> None:
    """A stream cut, reset, stalled or ended short after some chunks: complete() returns
    the next member's whole answer, with exactly one request to each."""
    if cause == "cut short" and both_transports == "litellm":
        pytest.skip("litellm supplies a finish reason itself: a clean early end looks whole")
    async with serve(f"{WHOLE},{INTERRUPTIONS[cause]}") as a, serve(WHOLE) as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), stream_idle_timeout_ms=300)
        result = await lb_.complete(HI)
        assert (result.backend, result.text) == ("b", TEXT)
        assert (a.hits, b.hits) == (1, 1)
        assert result.failover
        metrics = lb_.stats()["backendMetrics"]["a"]
    assert (metrics["interruptions"], metrics["failures"]) == (1, 1)


async def test_complete_under_roundrobin_moves_on_at_once() -> None:
    """Round-robin: the interrupted member is not tried again in a later pass."""
    async with serve(f"{WHOLE},drop_after=2") as a, serve(f"{WHOLE},status=503") as b:
        lb_ = make_lb({"a": a, "b": b}, "roundrobin", clock=FakeClock(), failover_retry_count=3)
        with pytest.raises(NoBackendAvailableError):
            await lb_.complete(HI)
        assert (a.hits, b.hits) == (1, 3)


# -- streaming callers ------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["cut", "reset", "stall"])
async def test_stream_continues_on_a_prefill_member(cause: str) -> None:
    """The caller's text equals one uninterrupted answer: the continuation member gets
    the delivered text as a trailing assistant message and streams only the rest."""
    async with serve(f"{WHOLE},{INTERRUPTIONS[cause]}") as a, serve(WHOLE) as b:
        lb_ = make_lb(
            {"a": a, "b": b},
            clock=FakeClock(),
            stream_idle_timeout_ms=300,
            member_settings={"b": PREFILL},
        )
        text, error = await streamed(lb_)
        assert error is None
        assert text == TEXT
        sent = b.requests[-1]["messages"]
        stats = lb_.stats()["backendMetrics"]
    assert sent[:-1] == HI
    assert sent[-1]["role"] == "assistant"
    assert TEXT.startswith(sent[-1]["content"]) and sent[-1]["content"]
    assert stats["a"]["interruptions"] == 1 and stats["b"]["continuations"] == 1


async def test_usage_after_a_continuation_is_the_sum_of_both_members() -> None:
    """The caller's final usage, stats tokens and TPM count what each member was billed
    for: the broken one's estimate (its usage never came) plus the continuing one's."""
    from lbprovider.window import estimate_tokens

    async with (
        serve(f"{WHOLE},drop_after=3") as a,
        serve(f"{WHOLE},prompt_tokens=40,completion_tokens=6,cached_tokens=30") as b,
    ):
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), member_settings={"b": PREFILL})
        usages = [chunk.usage async for chunk in lb_.stream(HI) if chunk.usage is not None]
        delivered_by_a = b.requests[-1]["messages"][-1]["content"]
        report = lb_.stats()
    billed_a = estimate_tokens(HI, delivered_by_a)
    final = usages[-1]
    assert (final.prompt_tokens, final.completion_tokens) == (40, 6 + billed_a)
    assert final.cache_read_tokens == 30
    metrics = report["backendMetrics"]
    assert (metrics["a"]["tokens"], metrics["b"]["tokens"]) == (billed_a, 46)
    assert (metrics["a"]["cacheReadTokens"], metrics["b"]["cacheReadTokens"]) == (0, 30)
    assert report["currentTPM"]["a"] > 0 and report["currentTPM"]["b"] > 0


async def test_continuation_refused_gives_the_original_error() -> None:
    """A continuation member that refuses (any 4xx): the caller gets the interruption."""
    async with serve(f"{WHOLE},drop_after=3") as a, serve("status=400") as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), member_settings={"b": PREFILL})
        text, error = await streamed(lb_)
        assert isinstance(error, StreamInterruptedError)
        assert error.member == "a" and error.status is None
        assert "simulated 400" not in str(error)
        assert TEXT.startswith(text) and text
        assert b.hits == 1


async def test_no_continuation_without_prefill() -> None:
    """The next admitted member cannot continue: StreamInterruptedError naming the member."""
    async with serve(f"{WHOLE},drop_after=3") as a, serve(WHOLE) as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock())
        _, error = await streamed(lb_)
        assert isinstance(error, StreamInterruptedError) and error.member == "a"
        assert b.hits == 0


async def test_no_continuation_inside_a_tool_call() -> None:
    """A stream interrupted inside a tool call is never continued (nor replayed)."""
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    async with serve("tool_call,drop_after=2") as a, serve("tool_call") as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), member_settings={"b": PREFILL})
        with pytest.raises(StreamInterruptedError):
            async for _ in lb_.stream(HI, tools=tools):
                pass
        assert b.hits == 0


# -- the idle timeout ---------------------------------------------------------------------


async def test_idle_timeout_only_after_the_first_chunk() -> None:
    """A slow first chunk is the first-chunk timeout's business, not the idle timeout's."""
    async with serve(f"{WHOLE},stall_first_chunk=0.5") as a, serve(WHOLE) as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), stream_idle_timeout_ms=100)
        result = await lb_.complete(HI)
        assert (result.backend, result.text, b.hits) == ("a", TEXT, 0)


async def test_idle_timeout_interrupts_and_closes_upstream() -> None:
    """Silence after the first chunk interrupts the stream and closes the connection."""
    async with serve(f"{WHOLE},stall_after=2") as a, serve(WHOLE) as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), stream_idle_timeout_ms=200)
        _, error = await streamed(lb_)
        assert isinstance(error, StreamInterruptedError)
        assert "silent" in str(error)
        await a.wait_for(lambda s: s.disconnects == 1)


async def test_idle_timeout_off_with_zero() -> None:
    """stream_idle_timeout_ms = 0: a slow stream is waited for."""
    async with serve("chunks=3,chunk_delay=0.3") as a, serve() as b:
        lb_ = make_lb({"a": a, "b": b}, clock=FakeClock(), stream_idle_timeout_ms=0)
        assert (await lb_.complete(HI)).backend == "a"


async def _source(gates: list[asyncio.Event]) -> AsyncIterator[int]:
    for i, gate in enumerate(gates):
        await gate.wait()
        yield i


async def test_idle_wrapper_counts_only_waiting_time() -> None:
    """Time the consumer spends between items is not silence; waiting too long is."""
    clock = FakeClock(timers=True)  # its timers fire when it is moved past their time

    async def let_time_pass(seconds: float) -> None:
        clock.advance(seconds)
        for _ in range(3):  # due timers ran; let what they woke run
            await asyncio.sleep(0)

    gates = [asyncio.Event() for _ in range(3)]
    for gate in gates[:2]:
        gate.set()
    wrapped = IdleTimeout(_source(gates), 0.05, member="m", clock=clock)
    assert await anext(wrapped) == 0
    await let_time_pass(0.2)  # the consumer's own time: longer than the idle timeout
    assert await anext(wrapped) == 1
    third = asyncio.create_task(anext(wrapped))  # the third item never comes
    await asyncio.sleep(0)
    await let_time_pass(0.01)
    assert not third.done()  # waiting, not yet too long
    await let_time_pass(0.1)
    with pytest.raises(StreamIdleTimeoutError):
        await third


async def test_idle_wrapper_leaves_outside_cancellation_alone() -> None:
    """A caller's cancel is a cancel, not an idle timeout."""
    gate = asyncio.Event()
    wrapped = IdleTimeout(_source([gate]), 60, member="m")
    task = asyncio.create_task(anext(wrapped))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
