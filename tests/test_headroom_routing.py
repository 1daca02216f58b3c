"""Rate-limit headroom (SPEC §3.6) end to end: a member that said it has nothing left is
skipped until its reset, tried last when nothing else can serve, in both header dialects."""

from __future__ import annotations

import pytest

from lbprovider.sim import serve
from tests.conftest import HI, make_lb


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_member_with_no_requests_left_is_skipped(provider: str) -> None:
    """After the limited member says 0 requests remain, it is skipped (no 429 reaches it)
    and counted; stats show its rateLimit."""
    async with serve("rpm_limit=1") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, "roundrobin", provider=provider)
        served = [(await lb.complete(HI)).backend for _ in range(4)]
        assert served == ["a", "b", "b", "b"]
        assert a.limited == 0 and a.hits == 1
        report = lb.stats()["backendMetrics"]["a"]
        assert report["headroomSkips"] == 1
        assert report["rateLimit"]["remainingRequests"] == 0
        assert report["rateLimit"]["resetAt"] is not None


async def test_last_resort_when_every_member_is_out() -> None:
    """Members skipped for headroom are deferred, never dropped: with every member out,
    they are still asked."""
    async with serve("rpm_limit=1") as a, serve("rpm_limit=1") as b:
        lb = make_lb({"a": a, "b": b}, "roundrobin", failover_retry_count=1)
        assert [(await lb.complete(HI)).backend for _ in range(2)] == ["a", "b"]
        with pytest.raises(Exception, match="429"):
            await lb.complete(HI)
        assert (a.hits, b.hits) == (2, 2)  # both asked all the same


async def test_off_when_disabled() -> None:
    """headroom_enabled false: the member is asked and answers 429."""
    async with serve("rpm_limit=1") as a, serve() as b:
        lb = make_lb({"a": a, "b": b}, "roundrobin", headroom_enabled=False)
        served = [(await lb.complete(HI)).backend for _ in range(3)]
        assert served == ["a", "b", "b"]
        assert a.limited == 1
        assert lb.stats()["backendMetrics"]["a"]["headroomSkips"] == 0
