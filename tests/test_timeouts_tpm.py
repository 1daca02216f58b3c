"""SPEC §4 (first-chunk timeout) and §5 (tokens per minute)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lbprovider import window
from lbprovider.errors import FirstChunkTimeoutError
from lbprovider.sim import serve
from lbprovider.testing import FakeClock
from lbprovider.timeouts import FirstChunkTimeout
from tests.conftest import HI, make_lb

# -- the wrapper, on a plain async iterator ------------------------------------------------------


class Source:
    """An async iterator whose items are released by hand; remembers being closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.closed = False

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        return await self.queue.get()

    async def aclose(self) -> None:
        self.closed = True


async def test_wrapper_times_only_the_first_item() -> None:
    """A deadline guards the first item only; later items are awaited with none."""
    clock = FakeClock(timers=True)
    armed: list[float] = []
    arm = clock.call_later

    def counting(delay: float, callback: Any) -> Any:
        armed.append(delay)
        return arm(delay, callback)

    clock.call_later = counting  # type: ignore[method-assign]
    src = Source()
    for item in (1, 2, 3):
        src.queue.put_nowait(item)
    wrapped = FirstChunkTimeout(src, 0.05, member="m", clock=clock)
    assert [await anext(wrapped) for _ in range(3)] == [1, 2, 3]
    assert armed == [0.05]
    assert not src.closed


async def test_wrapper_expiry_on_the_injected_clock() -> None:
    """The first-chunk deadline runs on the engine's clock: moving it past the limit
    expires the wait, however little real time went by."""
    clock = FakeClock(timers=True)
    src = Source()
    waiting = asyncio.create_task(anext(FirstChunkTimeout(src, 30, member="m", clock=clock)))
    await asyncio.sleep(0)
    clock.advance(29)
    await asyncio.sleep(0)
    assert not waiting.done()
    clock.advance(2)
    with pytest.raises(FirstChunkTimeoutError):
        await waiting
    assert src.closed


async def test_wrapper_expiry_closes_source() -> None:
    """On expiry the source is closed and FirstChunkTimeoutError (retryable) is raised."""
    src = Source()
    with pytest.raises(FirstChunkTimeoutError) as info:
        await anext(FirstChunkTimeout(src, 0.02, member="m"))
    assert src.closed
    assert info.value.retryable and info.value.member == "m"


async def test_wrapper_without_timeout_waits() -> None:
    """No timeout: the wrapper is transparent."""
    src = Source()
    src.queue.put_nowait(7)
    assert await anext(FirstChunkTimeout(src, None)) == 7


# -- over HTTP -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("both_transports")
async def test_first_chunk_timeout_fails_over_and_closes_upstream() -> None:
    """A stalled first chunk times out, counts as a timeout, closes the upstream and moves
    on at once: a silent backend stays silent, so it is not retried (SPEC §3.2 v2)."""
    async with serve("stall_first_chunk=30") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock(), timeout_ms=100)
        result = await lb.complete(HI)
        assert result.backend == "b"
        assert a.hits == 1
        await a.wait_for(lambda s: s.disconnects == 1)
        metrics = lb.stats()["backendMetrics"]["a"]
        assert (metrics["timeouts"], metrics["failures"]) == (1, 1)


@pytest.mark.usefixtures("both_transports")
async def test_role_chunk_does_not_count_as_first_chunk() -> None:
    """The sim sends the role chunk at once; only content stops the clock."""
    async with serve("stall_first_chunk=30") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock(), timeout_ms=100, failover_retry_count=1)
        assert (await lb.complete(HI)).backend == "b"


@pytest.mark.usefixtures("both_transports")
async def test_slow_stream_after_fast_first_chunk_not_cut() -> None:
    """After the first chunk nothing is timed: a slow stream completes."""
    async with serve("chunks=4,chunk_delay=0.15") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, clock=FakeClock(), timeout_ms=100)
        result = await lb.complete(HI)
        assert result.backend == "a" and b.hits == 0
        assert result.text == "Hello from the simulated backend."
        assert lb.stats()["backendMetrics"]["a"]["timeouts"] == 0


# -- TPM -----------------------------------------------------------------------------------------

NOW = 60 * 1_000_000 + 30.0  # half way through minute 1_000_000


def test_tpm_empty_is_zero() -> None:
    """No history: TPM 0, never skipped."""
    assert window.current_tpm(None, NOW) == 0
    assert window.current_tpm({}, NOW) == 0
    assert not window.should_skip(0, 1000)


def test_tpm_divides_by_elapsed_minutes() -> None:
    """TPM = sum of the last 5 buckets / minutes since the oldest non-empty one, inclusive."""
    buckets = window.add_tokens(None, NOW - 120, 300)  # two minutes ago
    buckets = window.add_tokens(buckets, NOW, 300)
    assert window.current_tpm(buckets, NOW) == 600 / 3
    assert window.current_tpm(window.add_tokens(None, NOW, 90), NOW) == 90


def test_tpm_five_minute_window() -> None:
    """Buckets older than 5 minutes are dropped from the sum and from storage."""
    buckets = window.add_tokens(None, NOW - 300, 1000)  # five minutes ago: out
    buckets = window.add_tokens(buckets, NOW - 240, 100)  # four minutes ago: in
    assert window.current_tpm(buckets, NOW) == 100 / 5
    buckets = window.add_tokens(buckets, NOW, 0)
    assert window.minute_of(NOW - 300) not in buckets.minutes
    assert str(window.minute_of(NOW - 300)) not in buckets.to_dict()
    assert window.current_tpm(buckets, NOW + 60) == 0  # the 4-minutes-ago one aged out too


@pytest.mark.parametrize(
    ("tpm", "threshold", "skip"),
    [
        (0, 100, False),
        (50, 100, True),
        (100, 100, False),
        (150, 100, False),
        (50, None, False),
        (50, 0, False),
    ],
)
def test_skip_rule(tpm: float, threshold: int | None, skip: bool) -> None:
    """Skip when threshold > 0 and 0 < TPM < threshold."""
    assert window.should_skip(tpm, threshold) is skip


def test_estimate_tokens() -> None:
    """About four characters a token, at least one."""
    assert window.estimate_tokens([{"role": "user", "content": "x" * 40}], "y" * 40) == 20
    assert window.estimate_tokens([], "") == 1


@pytest.mark.usefixtures("both_transports")
async def test_tpm_skips_slow_member_but_never_everything() -> None:
    """A member with low rolling TPM is skipped; when all are low, one still serves."""
    async with (
        serve("prompt_tokens=10,completion_tokens=10") as a,
        serve("prompt_tokens=10,completion_tokens=10") as b,
    ):
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b}, "roundrobin", clock=clock, tpm_threshold=1000)
        assert [(await lb.complete(HI)).backend for _ in range(2)] == ["a", "b"]
        # both now have TPM 20 (< 1000): both are skipped by the rule, yet the request runs
        result = await lb.complete(HI)
        assert result.backend == "a"
        stats = lb.stats()
        assert stats["currentTPM"] == {"a": 40.0, "b": 20.0}
        assert stats["backendMetrics"]["a"]["skips"] == 1
        assert stats["backendMetrics"]["b"]["skips"] == 1


@pytest.mark.usefixtures("both_transports")
async def test_tpm_skip_prefers_member_without_history() -> None:
    """A low-TPM member is passed over for one with no history (never skipped)."""
    async with serve() as a, serve() as b:
        clock = FakeClock()
        lb = make_lb({"a": a, "b": b}, clock=clock, tpm_threshold=1000)
        assert (await lb.complete(HI)).backend == "a"
        assert (await lb.complete(HI)).backend == "b"
        assert lb.stats()["backendMetrics"]["a"]["skips"] == 1
